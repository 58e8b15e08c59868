"""The same clients with authentication on, against the agent and through the gateway: TokenReview and
API-key Secrets on the real API server, the TarsModels' spec.access read by the gateway. Credentials
travel as each client sends them: an HTTP header, gRPC metadata, OpenAI's api_key."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tars_gateway.auth import ModelPolicies, gateway_middleware
from tars_gateway.routes import Endpoint, RouteTable
from tars_gateway.server import create_app as gateway_app
from tests.fixtures import ControlPlane
from tests.protocols import clients
from tests.protocols.conftest import Served, SessionBackend, protocol_models, serve_with_grpc, start_agent
from tests.security.conftest import Tokens, guard_for, kube_api, tokens

__all__ = ["kube_api", "tokens"]
KEY = "tars-protocol-key-0123456789"
ACCESS = {"serviceAccounts": [{"name": "caller"}], "apiKeySecrets": ["protocol-keys"]}


@dataclass
class Paths:
    agent: Served
    gateway: Served
    token: str


@pytest.fixture
async def paths(
    control_plane: ControlPlane,
    namespace: str,
    kube_api: Any,
    tokens: Tokens,
    protocol_backend: SessionBackend,
    edge_tiny: Path,
) -> AsyncIterator[Paths]:
    tokens.service_account(namespace, "caller")
    tokens.secret(namespace, "protocol-keys", {"ci": KEY})
    models = protocol_models(edge_tiny, namespace, access=ACCESS)
    for wanted in models:  # the gateway reads spec.access from the API server
        body = wanted.model_dump(mode="json", by_alias=True, exclude_none=True)
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(body))
    agent, agent_serving = await start_agent(protocol_backend, edge_tiny, models, guard_for(kube_api))
    table = RouteTable()
    try:
        async for agent_served in agent_serving:
            for wanted in models:
                table.model_nodes[wanted.metadata.name] = "tars"
                address = agent_served.http.removeprefix("http://")
                table.set_slice(wanted.metadata.name, "s", [(Endpoint(address), True)])
            settings = argparse.Namespace(attempts=1, wake_timeout=1.0, upstream_timeout=60.0)
            middleware = gateway_middleware(guard_for(kube_api), ModelPolicies(kube_api, namespace))
            async for gateway_served in serve_with_grpc(gateway_app(table, settings, middleware), 8 * 1024 * 1024):
                yield Paths(agent_served, gateway_served, tokens.token(namespace, "caller"))
    finally:
        agent.close()


@pytest.mark.parametrize("where", ["agent", "gateway"])
async def test_clients_with_credentials(paths: Paths, where: str) -> None:
    served: Served = getattr(paths, where)
    token = {"Authorization": f"Bearer {paths.token}"}
    await asyncio.to_thread(clients.http_triton, served.http, token)
    await asyncio.to_thread(clients.http_triton, served.http, {"X-API-Key": KEY})
    metadata = {"authorization": f"Bearer {paths.token}"}
    await asyncio.to_thread(clients.grpc_triton, served.grpc, metadata)
    await asyncio.to_thread(clients.grpc_typed_contents, served.grpc, {"x-api-key": KEY})
    await asyncio.to_thread(clients.openai_generation, served.http, KEY)


def _refusals(served: Served) -> None:
    client = grpcclient.InferenceServerClient(served.grpc)
    assert client.is_server_live()  # health and server metadata stay open
    for headers, status in (({}, "UNAUTHENTICATED"), ({"x-api-key": "wrong"}, "UNAUTHENTICATED")):
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_metadata("sentiment", headers=headers)
        assert refused.value.status() == f"StatusCode.{status}"
    client.close()
    generator = openai.OpenAI(base_url=f"{served.http}/openai/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        generator.completions.create(model="edge-tiny", prompt="hi", max_tokens=2)


@pytest.mark.parametrize("where", ["agent", "gateway"])
async def test_refusals_in_each_protocols_form(paths: Paths, where: str) -> None:
    await asyncio.to_thread(_refusals, getattr(paths, where))
