"""TLS for the data plane: server contexts from a mounted cert/key pair (e.g. a cert-manager Secret),
and the client context the gateway uses to reach agents over HTTPS."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """HTTPS for a listener; TLS 1.2 at least. Fails at start-up (not at the first request) when the
    files are missing or do not match."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def upstream_context(ca: Path | str) -> ssl.SSLContext:
    """The gateway's client context towards agents: the chain must lead to ``ca``.

    Host names are not checked: the gateway reaches agents by pod IP (from EndpointSlices), and every
    agent of a TarsNode shares one certificate from the DaemonSet's Secret, which cannot name every pod
    IP. Trust comes from the private CA, which issues only data-plane certificates.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context
