"""Fixtures for the model and TARS-function tests: real weights, real guests, a real agent.

Everything goes through the agent's own pieces: ``tars_agent.assembly.default_catalog`` (with the
agent's own ``ModelServices``), the capability allowlist and the Wasmtime backend. Guest builds and
compiled components are cached across runs by tars_guests.build and the backend; MiniLM is loaded
once per session.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tars_agent.agent import Agent, AgentConfig
from tars_agent.capabilities import ModelKey
from tars_agent.repository import LoadedModel
from tars_agent.runtimes.minilm import MiniLMEmbedder
from tars_agent.runtimes.services import ModelServices, shared_embedder
from tars_agent.sandbox.base import GuestFailure
from tars_agent.sandbox.wasmtime_backend import WasmtimeBackend
from tars_api import TarsModel
from tars_guests.apps import APPS, build_app
from tarsctl.models import make_synthetic

ALL_CAPABILITIES = [
    "nn.embed",
    "nn.generate",
    "nn.sentiment",
    "knowledge.query",
    "knowledge.upsert",
    "functions.invoke",
    "operator.request",
    "clock.now",
    "log.write",
]


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    return shared_embedder()


@pytest.fixture(scope="session")
def edge_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("edge-tiny"), "edge-tiny", seed=7)


@pytest.fixture(scope="session")
def components() -> dict[str, Path]:
    # Two cores: two componentize-py builds at once (only on a cold cache; later runs are lookups).
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(APPS, pool.map(build_app, APPS), strict=True))


class SessionBackend(WasmtimeBackend):
    """Shared by the session's agent so each component is compiled or deserialised once."""

    def close(self) -> None:
        pass


def tars_model(
    name: str, source: str, kind: str, capabilities: list[str], namespace: str = "default", **spec: Any
) -> TarsModel:
    body = {"nodeRef": {"name": "test"}, "kind": kind, "source": source, "capabilities": capabilities, **spec}
    return TarsModel.model_validate({"metadata": {"name": name, "namespace": namespace}, "spec": body})


class ModelAgent:
    """A real agent with the builtin models loaded; ``call`` runs one request in a fresh sandbox."""

    def __init__(self, agent: Agent, loop: asyncio.AbstractEventLoop) -> None:
        self.agent = agent
        self.loop = loop

    @property
    def services(self) -> ModelServices:
        return self.agent.services

    def load(self, model: TarsModel) -> LoadedModel:
        return self.loop.run_until_complete(self.agent.repository.load(model))

    def call_raw(self, name: str, body: str, namespace: str = "default") -> str:
        loaded = self.agent.repository.models[ModelKey(namespace, name)]
        return self.loop.run_until_complete(self.agent.repository.invoke(loaded, body))

    def call(self, name: str, body: Any, namespace: str = "default") -> Any:
        return json.loads(self.call_raw(name, json.dumps(body), namespace))

    def error(self, name: str, body: Any, namespace: str = "default") -> str:
        """The guest's error text for a request that must fail."""
        raw = body if isinstance(body, str) else json.dumps(body)
        with pytest.raises(GuestFailure) as failure:
            self.call_raw(name, raw, namespace)
        return failure.value.public


BUILTINS = {
    "sentiment": ("builtin://sentiment-vader", "sentiment", []),
    "embedding": ("builtin://all-minilm-l6-v2", "embedding", ["nn.embed"]),
    "tars-reasoning": ("builtin://tars-reasoning", "reasoning", ALL_CAPABILITIES),
    "autonomous-reasoning": ("builtin://autonomous-reasoning", "function", ALL_CAPABILITIES),
    "self-healing": ("builtin://self-healing", "function", ALL_CAPABILITIES),
    "knowledge-query": ("builtin://knowledge-query", "function", ALL_CAPABILITIES),
    "agent-coordination": ("builtin://agent-coordination", "function", ALL_CAPABILITIES),
}


@pytest.fixture(scope="session")
def model_agent(components: dict[str, Path], edge_tiny_dir: Path, embedder: MiniLMEmbedder) -> Iterator[ModelAgent]:
    backend = SessionBackend()
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(backend.load_component, components.values()))
    loop = asyncio.new_event_loop()
    agent = Agent(AgentConfig(warm_pool_size=1, workers=4, model_roots=(edge_tiny_dir,)), backend)
    harness = ModelAgent(agent, loop)
    for name, (source, kind, capabilities) in BUILTINS.items():
        harness.load(tars_model(name, source, kind, capabilities))
    harness.load(tars_model("edge-tiny", f"file://{edge_tiny_dir}", "text-generation", ["nn.generate"], maxTokens=24))
    yield harness
    agent.close()
    loop.close()
    WasmtimeBackend.close(backend)
