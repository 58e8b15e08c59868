"""Fixtures for the node-agent tests: real guests, a real Wasmtime backend, real agents.

Guest components are built once (and cached across runs by tars_guests.build); the Wasmtime backend
is shared by the session so each component is compiled (or loaded from the compiled cache) once.
"""

from __future__ import annotations

import atexit
import functools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tars_agent.agent import Agent, AgentConfig
from tars_agent.assembly import echo_bundle
from tars_agent.capabilities import CallContext, default_registry
from tars_agent.catalog import Catalog, ModelBundle, SourceRequest
from tars_agent.functions import inline_function_bundle
from tars_agent.sandbox.base import GuestSource, SandboxBackend
from tars_agent.sandbox.probe import native_available
from tars_agent.sandbox.wasmtime_backend import WasmtimeBackend
from tars_api import TarsModel
from tars_api.tarsnode import SandboxLimits
from tars_guests.build import build_guest
from tars_guests.testapps import ECHO_APP, HOSTILE_APP


@pytest.fixture(scope="session")
def guests() -> dict[str, Path]:
    return {"echo": build_guest(ECHO_APP), "hostile": build_guest(HOSTILE_APP)}


class SharedBackend(WasmtimeBackend):
    """The session's backend: agents in tests must not stop its epoch ticker when they close."""

    def close(self) -> None:
        pass


@functools.cache
def backend_on_path(path: str) -> SandboxBackend:
    """The session's Wasmtime backend on ``path``: ``native`` (tars_native) or ``python`` (wasmtime-py)."""
    if path == "native":
        from tars_agent.sandbox.native_backend import NativeBackend

        return NativeBackend()
    shared = SharedBackend()
    atexit.register(WasmtimeBackend.close, shared)  # its epoch ticker stops before the interpreter does
    return shared


# The path the agent takes by default (test_native_path fails when the extension is missing); the
# limit tests run on both paths (test_isolation, test_hostile_functions, test_native_path).
DEFAULT_PATH = "native" if native_available() else "python"


@pytest.fixture(scope="session")
def backend(guests: dict[str, Path]) -> SandboxBackend:
    shared = backend_on_path(DEFAULT_PATH)
    for path in guests.values():
        shared.load_component(path)
    return shared


def hostile_bundle(_request: SourceRequest) -> ModelBundle:
    return ModelBundle(guest=GuestSource(component=build_guest(HOSTILE_APP), app_dir=HOSTILE_APP))


def slow_capability(_ctx: CallContext, args: dict[str, Any]) -> Any:
    time.sleep(float(args.get("seconds", 1)))
    return {"slept": True}


def tars_model(name: str, source: str, namespace: str = "default", **spec: Any) -> TarsModel:
    body = {"nodeRef": {"name": "test"}, "kind": "function", "source": source, **spec}
    return TarsModel.model_validate({"metadata": {"name": name, "namespace": namespace}, "spec": body})


TEST_LIMITS = SandboxLimits.model_validate(
    {"memoryMiB": 128, "cpuTimeMs": 1500, "wallTimeoutMs": 3000, "outputBytes": 65536}
)


def make_agent(backend: WasmtimeBackend, **config: Any) -> Agent:
    capabilities = default_registry()
    # operator.request is an allowed-list name from the API enum; here it stands for a slow host call.
    capabilities.register("operator.request", slow_capability)
    catalog = Catalog(builtins={"echo": echo_bundle, "hostile": hostile_bundle}, function=inline_function_bundle)
    settings = {"workers": 4, "max_queue": 16, "warm_pool_size": 2, "node_limits": TEST_LIMITS, **config}
    return Agent(AgentConfig(**settings), backend, "wasmtime requested by the tests", capabilities, catalog)


STANDARD_MODELS = [
    tars_model("echo", "builtin://echo", capabilities=["clock.now"]),
    tars_model("hostile", "builtin://hostile", capabilities=["clock.now", "operator.request"]),
    tars_model("tight", "builtin://hostile", limits={"memoryMiB": 64, "cpuTimeMs": 300, "outputBytes": 4096}),
]


@pytest.fixture
async def agent(backend: WasmtimeBackend) -> AsyncIterator[Agent]:
    instance = make_agent(backend)
    for model in STANDARD_MODELS:
        assert await instance.ensure_loaded(model), instance.repository.failed
    yield instance
    instance.close()
