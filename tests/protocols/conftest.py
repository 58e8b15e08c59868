"""Fixtures for the protocol tests: a real agent in-process with real models (VADER sentiment,
MiniLM embeddings, a synthetic GPT-2 checkpoint), served over HTTP on a real port and over gRPC
through the same front door the agent's main() starts, for the clients users already have."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tars_agent.agent import Agent, AgentConfig
from tars_agent.sandbox.wasmtime_backend import WasmtimeBackend
from tars_agent.server import create_app
from tars_api import TarsModel
from tars_common import oip_grpc
from tars_common.auth import AccessGuard
from tarsctl.models import make_synthetic


class SessionBackend(WasmtimeBackend):
    """Shared by the session's agents so each component is compiled or deserialised once."""

    def close(self) -> None:
        pass


@pytest.fixture(scope="session")
def protocol_backend() -> Iterator[SessionBackend]:
    backend = SessionBackend()
    yield backend
    WasmtimeBackend.close(backend)


@pytest.fixture(scope="session")
def edge_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("edge-tiny"), "edge-tiny", seed=7)


def model(name: str, source: str, kind: str, namespace: str = "default", **spec: Any) -> TarsModel:
    body = {"nodeRef": {"name": "test"}, "kind": kind, "source": source, **spec}
    return TarsModel.model_validate({"metadata": {"name": name, "namespace": namespace}, "spec": body})


def protocol_models(edge_tiny: Path, namespace: str = "default", **spec: Any) -> list[TarsModel]:
    return [
        model("sentiment", "builtin://sentiment-vader", "sentiment", namespace, **spec),
        model("sentence-bert", "builtin://all-minilm-l6-v2", "embedding", namespace, capabilities=["nn.embed"], **spec),
        model(
            "edge-tiny",
            f"file://{edge_tiny}",
            "text-generation",
            namespace,
            capabilities=["nn.generate"],
            maxTokens=16,
            **spec,
        ),
    ]


@dataclass
class Served:
    """An agent (or gateway) on real ports: ``http`` the base URL, ``grpc`` host:port."""

    http: str
    grpc: str
    client: TestClient


async def serve_with_grpc(app: Any, max_bytes: int) -> AsyncIterator[Served]:
    client = TestClient(TestServer(app))
    await client.start_server()
    bridge = oip_grpc.RestBridge(f"http://127.0.0.1:{client.port}")
    server, port = await oip_grpc.start(bridge, "127.0.0.1", 0, max_bytes)
    try:
        yield Served(f"http://127.0.0.1:{client.port}", f"127.0.0.1:{port}", client)
    finally:
        await server.stop(grace=None)
        await bridge.close()
        await client.close()


async def start_agent(
    backend: WasmtimeBackend, edge_tiny: Path, models: list[TarsModel], guard: AccessGuard | None = None
) -> tuple[Agent, AsyncIterator[Served]]:
    agent = Agent(AgentConfig(warm_pool_size=1, workers=2, model_roots=(edge_tiny,)), backend)
    for wanted in models:
        assert await agent.ensure_loaded(wanted), agent.repository.failed
    return agent, serve_with_grpc(create_app(agent, guard), agent.config.max_body_bytes)


@pytest.fixture
async def agent_served(protocol_backend: SessionBackend, edge_tiny: Path) -> AsyncIterator[Served]:
    agent, serving = await start_agent(protocol_backend, edge_tiny, protocol_models(edge_tiny))
    try:
        async for served in serving:
            yield served
    finally:
        agent.close()
