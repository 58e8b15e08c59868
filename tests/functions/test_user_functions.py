"""Users' own functions, deployed and invoked through a real agent (real Wasmtime sandboxes): Python
from inline code, a file and a ConfigMap; a Rust component from a file and a ConfigMap; limits
taken as the lower of the TarsModel's and the TarsNode's; bad functions refused before they run."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from tars_agent.agent import Agent
from tars_agent.capabilities import ModelKey
from tars_agent.repository import MiB
from tars_agent.sandbox.base import FailureReason, GuestFailure
from tests.functions.conftest import BROKEN_PYTHON, NODE_LIMITS, USER_PYTHON, ConfigMaps, function_model


async def call(agent: Agent, name: str, payload: dict[str, Any]) -> Any:
    model = agent.repository.find(name)
    assert model is not None, agent.repository.failed
    return json.loads(await agent.repository.invoke(model, json.dumps(payload)))


async def load(agent: Agent, name: str, **spec: Any) -> None:
    ok = await agent.ensure_loaded(function_model(name, **spec))
    assert ok, agent.repository.failed


async def test_python_function_from_inline_code_file_and_configmap(
    agent: Agent, configmaps: ConfigMaps, tmp_path: Path
) -> None:
    guest_py = tmp_path / "guest.py"
    guest_py.write_text(USER_PYTHON)
    configmaps[("tenant-a", "greeter")] = {"data": {"function.py": USER_PYTHON}}
    await load(agent, "inline", function={"code": USER_PYTHON}, capabilities=["clock.now"])
    await load(agent, "from-file", source=f"file://{guest_py}", capabilities=["clock.now"])
    await load(agent, "from-configmap", source="configmap://greeter/function.py", capabilities=["clock.now"])
    for name in ("inline", "from-file", "from-configmap"):
        result = await call(agent, name, {"text": "tars", "lang": "fr"})
        assert result == {"greeting": "bonjour", "upper": "TARS", "length": 4, "clock_seen": True}, name


async def test_rust_component_from_file_and_configmap(
    agent: Agent, configmaps: ConfigMaps, components: dict[str, Path]
) -> None:
    wasm = components["textstats"]
    configmaps[("tenant-a", "stats")] = {"binaryData": {"fn.wasm": base64.b64encode(wasm.read_bytes()).decode()}}
    await load(agent, "stats-file", source=f"file://{wasm}", capabilities=["clock.now"])
    await load(agent, "stats-configmap", source="configmap://stats/fn.wasm")
    text = "the cat saw the dog\nthe end"
    from_file = await call(agent, "stats-file", {"text": text})
    assert from_file["language"] == "rust"
    assert (from_file["words"], from_file["lines"], from_file["chars"]) == (7, 2, len(text))
    assert from_file["top"][0] == {"word": "the", "count": 3}
    assert isinstance(from_file["clock"]["unix"], float)
    # Without clock.now in its capabilities the same component is told no, and says so.
    refused = (await call(agent, "stats-configmap", {"text": text}))["clock"]["refused"]
    assert "capability clock.now is not allowed for model tenant-a/stats-configmap" in refused


async def test_limits_are_the_lower_of_model_and_node(agent: Agent, components: dict[str, Path]) -> None:
    source = f"file://{components['hostile']}"
    await load(agent, "tight", source=source, limits={"memoryMiB": 32, "cpuTimeMs": 200, "outputBytes": 2048})
    await load(agent, "greedy", source=source, limits={"memoryMiB": 4096, "cpuTimeMs": 60000, "outputBytes": 1 << 24})
    tight = agent.repository.models[ModelKey("tenant-a", "tight")].limits
    greedy = agent.repository.models[ModelKey("tenant-a", "greedy")].limits
    assert (tight.memory_bytes, tight.cpu_time_ms, tight.output_bytes) == (32 * MiB, 200, 2048)
    node = (NODE_LIMITS.memory_mi_b * MiB, NODE_LIMITS.cpu_time_ms, NODE_LIMITS.output_bytes)
    assert (greedy.memory_bytes, greedy.cpu_time_ms, greedy.output_bytes) == node
    # And the sandboxes enforce them: what the node allows, the tighter model may not do.
    assert (await call(agent, "greedy", {"op": "alloc", "mib": 48}))["allocated_mib"] == 48
    with pytest.raises(GuestFailure) as memory:
        await call(agent, "tight", {"op": "alloc", "mib": 48})
    assert memory.value.reason == FailureReason.MEMORY
    assert len((await call(agent, "greedy", {"op": "flood", "bytes": 4096}))["flood"]) == 4096
    with pytest.raises(GuestFailure) as output:
        await call(agent, "tight", {"op": "flood", "bytes": 4096})
    assert output.value.reason == FailureReason.OUTPUT


# --- refused before anything runs ------------------------------------------------------------------

CORE_MODULE = wasmtime.wat2wasm('(module (func (export "handle")))')
WRONG_SIGNATURE = wasmtime.wat2wasm(
    '(component (core module $m (func (export "f") (param i32) (result i32) local.get 0))'
    " (core instance $i (instantiate $m))"
    ' (func (export "handle") (param "x" u32) (result u32) (canon lift (core func $i "f"))))'
)
NO_HANDLE = wasmtime.wat2wasm("(component)")
FOREIGN_IMPORT = wasmtime.wat2wasm(
    '(component (import "wasi:http/outgoing-handler@0.2.0" (instance)) (import "tars:guest/host@0.1.0" (instance)))'
)


@pytest.mark.parametrize(
    ("spec_of", "expected"),
    [
        (lambda p: {"function": {"code": BROKEN_PYTHON}}, "spec.function.code: line 2"),
        (lambda p: {"function": {"code": "def run(x):\n    return x\n"}}, "defines no handle(input)"),
        (lambda p: {"source": "configmap://missing/function.py"}, "configmap missing not found"),
        (lambda p: {"source": f"file://{p / 'core.wasm'}"}, "a core WebAssembly module, not a component"),
        (lambda p: {"source": f"file://{p / 'wrong.wasm'}"}, "`handle` must be func(input-json: string)"),
        (lambda p: {"source": f"file://{p / 'nohandle.wasm'}"}, "exports no `handle` function"),
        (lambda p: {"source": f"file://{p / 'foreign.wasm'}"}, "imports wasi:http/outgoing-handler@0.2.0"),
        (lambda p: {"source": f"file://{p / 'broken.py'}"}, "broken.py: line 2"),
    ],
)
async def test_bad_functions_are_refused_by_the_agent(
    agent: Agent, tmp_path: Path, spec_of: Any, expected: str
) -> None:
    for file, data in {
        "core.wasm": CORE_MODULE,
        "wrong.wasm": WRONG_SIGNATURE,
        "nohandle.wasm": NO_HANDLE,
        "foreign.wasm": FOREIGN_IMPORT,
        "broken.py": BROKEN_PYTHON.encode(),
    }.items():
        (tmp_path / file).write_bytes(bytes(data))
    assert not await agent.ensure_loaded(function_model("bad", **spec_of(tmp_path)))
    error = agent.repository.failed[ModelKey("tenant-a", "bad")]
    assert error.startswith("InvalidFunction: ") and expected in error, error
    assert agent.repository.find("bad") is None


async def test_top_level_that_never_finishes_is_refused_at_build(agent: Agent, monkeypatch: Any) -> None:
    from tars_agent import functions

    monkeypatch.setattr(functions, "BUILD_TIMEOUT_S", 20.0)
    code = "while True:\n    pass\n\ndef handle(input):\n    return input\n"
    loaded = await asyncio.wait_for(agent.ensure_loaded(function_model("stuck", function={"code": code})), 120)
    assert not loaded
    assert "did not finish within 20 s while building" in agent.repository.failed[ModelKey("tenant-a", "stuck")]
