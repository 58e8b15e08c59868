"""A model loaded for a waiting request (a cold start) serves it first and fills its warm pool after,
so starting the pool's instances does not slow that first answer down; and loading it does not
resolve, read or hash again a guest the agent already has (issue 22)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tars_agent.agent import Agent, AgentConfig
from tars_agent.metrics import AgentMetrics
from tars_agent.pool import SandboxPool
from tars_agent.sandbox.base import GuestSource, Limits, SandboxBackend
from tars_agent.sandbox.wasmtime_backend import WasmtimeBackend
from tars_api import TarsModel
from tars_guests import compiled

from .conftest import DEFAULT_PATH, SharedBackend, backend_on_path


def test_an_empty_pool_is_topped_up_only_after_the_call(backend: SharedBackend, guests: dict[str, Path]) -> None:
    prepared = backend.prepare(GuestSource(component=guests["echo"]), lambda n, a: "{}", Limits())
    refiller = ThreadPoolExecutor(max_workers=1)
    pool = SandboxPool(prepared, 3, refiller, AgentMetrics(), "default/cold")
    try:
        instance = pool.take()  # nothing started yet: one now, and no refill beside the call
        time.sleep(0.3)
        assert pool.ready_count() == 0
        assert json.loads(instance.handle(json.dumps({"n": 1}))) == {"n": 1}
        instance.close()
        assert json.loads(pool.run(json.dumps({"n": 2}))) == {"n": 2}  # the refill starts after this call
        deadline = time.monotonic() + 30
        while pool.ready_count() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.ready_count() == 3
        pool.take().close()  # a warm take tops the pool up again at once
        deadline = time.monotonic() + 30
        while pool.ready_count() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.ready_count() == 3
    finally:
        pool.close()
        refiller.shutdown()


def backend_class(path: str) -> Any:  # the native class is imported only where tars_native is
    if path == "native":
        from tars_agent.sandbox.native_backend import NativeBackend

        return NativeBackend
    return WasmtimeBackend


@pytest.mark.parametrize("path", ["native", "python"])
def test_a_guest_prepared_again_is_not_read_and_hashed_again(
    path: str, guests: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each model woken from zero prepares its guest: the component is read (and hashed for its
    compiled code's key) once per file, not once per model."""
    kind = backend_class(path)
    read: list[Path] = []
    load_component = kind.load_component

    def counted(self: SandboxBackend, component: Path) -> object:
        read.append(component)
        return load_component(self, component)

    monkeypatch.setattr(kind, "load_component", counted)
    backend = kind()
    copy = Path(tempfile.mkdtemp()) / "echo.wasm"
    shutil.copyfile(guests["echo"], copy)
    try:
        for n in range(3):
            prepared = backend.prepare(GuestSource(component=copy), lambda n, a: "{}", Limits())
            instance = prepared.instantiate()
            assert json.loads(instance.handle(json.dumps({"n": n}))) == {"n": n}
            instance.close()
        assert read == [copy]
        # The same path with other contents (a file:// guest replaced in place) is read again.
        shutil.copyfile(guests["hostile"], copy.with_suffix(".new"))
        os.replace(copy.with_suffix(".new"), copy)
        backend.prepare(GuestSource(component=copy), lambda n, a: "{}", Limits())
        assert read == [copy, copy]
    finally:
        backend.close()
        shutil.rmtree(copy.parent)


async def test_models_of_one_builtin_resolve_its_component_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolving the compiled VADER guest hashes its crate's sources: an agent does it for its first
    sentiment-vader model only, not again for each model woken from zero."""
    built: list[str] = []
    build = compiled._build

    def counted(name: str) -> Path:
        built.append(name)
        return build(name)

    monkeypatch.setattr(compiled, "_built", {})  # as in a fresh agent process
    monkeypatch.setattr(compiled, "_build", counted)
    agent = Agent(AgentConfig(workers=1, warm_pool_size=1), backend_on_path(DEFAULT_PATH))
    try:
        for name in ("asleep-a", "asleep-b", "asleep-c"):
            spec = {"nodeRef": {"name": "tars"}, "kind": "sentiment", "source": "builtin://sentiment-vader"}
            model = TarsModel.model_validate({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
            assert await agent.ensure_loaded(model, prefill=False), agent.repository.failed
        assert built == ["vader"]
    finally:
        agent.close()
