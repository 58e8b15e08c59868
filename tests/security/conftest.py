"""Fixtures for the security tests: real agents in-process (as tests/agent does), the real API server
for TokenReview and Secrets, ServiceAccounts and tokens minted with kubectl."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tars_agent.agent import Agent
from tars_agent.server import create_app
from tars_agent.tenancy import FairAdmission
from tars_common.auth import AccessGuard, AuthConfig
from tests.agent.conftest import backend, guests, make_agent, tars_model  # fixtures, re-exported
from tests.fixtures import ControlPlane

__all__ = ["backend", "guests", "make_agent", "tars_model"]


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> Iterator[Any]:
    """A client with the local control plane's admin credentials: the agent's stand-in identity."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    yield api
    api.close()


class Tokens:
    """ServiceAccounts and their tokens, minted by the real API server."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def service_account(self, namespace: str, name: str) -> None:
        self.plane.kubectl("create", "serviceaccount", name, "-n", namespace)

    def token(self, namespace: str, name: str, duration: str = "10m") -> str:
        return self.plane.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()

    def secret(self, namespace: str, name: str, entries: dict[str, str]) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": entries,
        }
        self.plane.kubectl("apply", "-f", "-", input=json.dumps(body))

    def drop_secret_entry(self, namespace: str, name: str, entry: str) -> None:
        patch = json.dumps([{"op": "remove", "path": f"/data/{entry}"}])
        self.plane.kubectl("patch", "secret", name, "-n", namespace, "--type=json", "-p", patch)


@pytest.fixture
def tokens(control_plane: ControlPlane) -> Tokens:
    return Tokens(control_plane)


def guard_for(api: Any, registry: Any = None, **config: Any) -> AccessGuard:
    """The guard main() builds in cluster mode (main counts its decisions in the agent's registry)."""
    from prometheus_client import CollectorRegistry

    settings: dict[str, Any] = {"enabled": True, "secret_cache_ttl_s": 0.5, **config}
    return AccessGuard.from_api(AuthConfig(**settings), api, registry or CollectorRegistry())


async def serve(agent: Agent, guard: AccessGuard | None = None, admission: FairAdmission | None = None) -> TestClient:
    client = TestClient(TestServer(create_app(agent, guard, admission)))
    await client.start_server()
    return client
