"""HTTPS on the data plane: an agent (and the gateway in front of it) serving a cert from a private
CA; clients that trust the CA get through, clients that do not are refused at the handshake."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tars_agent.server import create_app
from tars_common import tls
from tars_gateway.routes import Endpoint, RouteTable
from tars_gateway.server import create_app as gateway_app
from tarsctl.localcluster import free_port
from tests.security.conftest import make_agent, tars_model

INFER = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["over tls"]}]}


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def issue(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a serving certificate for localhost/127.0.0.1 (what cert-manager's
    self-signed Issuer + CA Issuer produce in the chart)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("tars-data-plane-ca"))
        .issuer_name(_name("tars-data-plane-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("tars-agent"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


async def start(app: web.Application, context: ssl.SSLContext | None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    return runner, port


async def test_https_with_the_ca_succeeds_and_without_it_fails(backend: Any, tmp_path: Path) -> None:
    ca, cert, key = issue(tmp_path)
    agent = make_agent(backend)
    assert await agent.ensure_loaded(tars_model("echo", "builtin://echo"))
    runner, port = await start(create_app(agent), tls.server_context(cert, key))
    gateway = None
    try:
        trusting = ssl.create_default_context(cafile=str(ca))
        async with aiohttp.ClientSession() as session:
            async with session.post(f"https://127.0.0.1:{port}/v2/models/echo/infer", json=INFER, ssl=trusting) as r:
                assert r.status == 200
                assert (await r.json())["outputs"][0]["data"] == ["over tls"]
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"https://127.0.0.1:{port}/v2/health/live", ssl=ssl.create_default_context())
            with pytest.raises(aiohttp.ClientError):
                await session.get(f"http://127.0.0.1:{port}/v2/health/live")  # no plain HTTP on a TLS port

            # The gateway reaches the agent over HTTPS trusting only the CA, and serves HTTPS itself.
            table = RouteTable()
            table.model_nodes["echo"] = "tars"
            table.set_slice("echo", "s", [(Endpoint(f"127.0.0.1:{port}"), True)])
            settings = argparse.Namespace(attempts=1, wake_timeout=1.0, upstream_timeout=10.0)
            app = gateway_app(table, settings, upstream_ssl=tls.upstream_context(ca))
            gateway, gw_port = await start(app, tls.server_context(cert, key))
            url = f"https://127.0.0.1:{gw_port}/v2/models/echo/infer"
            async with session.post(url, json=INFER, ssl=trusting) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.post(url, json=INFER, ssl=ssl.create_default_context())
    finally:
        if gateway is not None:
            await gateway.cleanup()
        await runner.cleanup()
        agent.close()


async def test_a_gateway_that_does_not_trust_the_agents_ca_gets_no_answer(backend: Any, tmp_path: Path) -> None:
    _ca, cert, key = issue(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca, _, _ = issue(tmp_path / "other")
    agent = make_agent(backend)
    assert await agent.ensure_loaded(tars_model("echo", "builtin://echo"))
    runner, port = await start(create_app(agent), tls.server_context(cert, key))
    table = RouteTable()
    table.model_nodes["echo"] = "tars"
    table.set_slice("echo", "s", [(Endpoint(f"127.0.0.1:{port}"), True)])
    settings = argparse.Namespace(attempts=1, wake_timeout=0.5, upstream_timeout=5.0)
    gateway, gw_port = await start(gateway_app(table, settings, upstream_ssl=tls.upstream_context(other_ca)), None)
    try:
        url = f"http://127.0.0.1:{gw_port}/v2/models/echo/infer"
        async with aiohttp.ClientSession() as session, session.post(url, json=INFER) as r:
            assert r.status == 503
    finally:
        await gateway.cleanup()
        await runner.cleanup()
        agent.close()


def test_mismatched_key_fails_at_start_up(tmp_path: Path) -> None:
    _ca, cert, _key = issue(tmp_path)
    (tmp_path / "other").mkdir()
    _, _, wrong_key = issue(tmp_path / "other")
    with pytest.raises(ssl.SSLError):
        tls.server_context(cert, wrong_key)
