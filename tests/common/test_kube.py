"""tars_common.kube: the one way every program builds its Kubernetes client."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from tars_common.kube import CONNECTION_POOL_SIZE, load_client_config

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:%d", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


def kubeconfig(directory: Path, port: int) -> Path:
    path = directory / f"kubeconfig-{port}"
    path.write_text(KUBECONFIG % port)
    return path


def test_kubeconfig_env_is_read_when_called_not_when_kubernetes_was_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kubernetes is imported by now (above), so its own default location is already fixed.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, 6443)))
    api = load_client_config()
    assert api.configuration.host == "https://127.0.0.1:6443"
    assert api.configuration.connection_pool_maxsize == CONNECTION_POOL_SIZE


def test_an_explicit_kubeconfig_wins_and_the_global_default_is_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, 6443)))
    before = client.Configuration.get_default_copy().host
    api = load_client_config(str(kubeconfig(tmp_path, 7443)))
    assert api.configuration.host == "https://127.0.0.1:7443"
    assert client.Configuration.get_default_copy().host == before
