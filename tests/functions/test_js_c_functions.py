"""Users' functions in JavaScript and C through a real agent (real Wasmtime sandboxes): the examples
deployed from a ConfigMap and a file, bad ones refused with the reason, and the hostile functions of
test_hostile_functions.py written again in each language, each attempt stopped with the agent saying why.

JavaScript is built by the agent itself (componentize-js, installed on first use); C is built by
guests/examples/c/build.sh (clang for wasm32-wasi, wit-bindgen c, the preview-1 adapter) and deployed
as a component, like Rust.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tars_agent.agent import Agent
from tars_agent.capabilities import ModelKey
from tars_agent.sandbox.base import FailureReason, GuestFailure
from tars_api.functions import check_code, check_component_bytes, code_from_configmap
from tarsctl import fn
from tests.functions.conftest import REPO, ConfigMaps, SharedBackend, function_model, make_agent
from tests.functions.test_validation_and_cli import deploy_args

EXAMPLES = REPO / "guests" / "examples"
JS_EXAMPLE = EXAMPLES / "js" / "greeter.js"
HOSTILE_JS = Path(__file__).resolve().parent / "hostile_js" / "hostile.js"
HOSTILE_C = Path(__file__).resolve().parent / "hostile_c" / "hostile.c"
LANGUAGES = ["javascript", "c"]


@pytest.fixture(scope="module")
def c_components(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The C example and the hostile C function, built by the example's own script."""
    out = tmp_path_factory.mktemp("c-components")
    script = EXAMPLES / "c" / "build.sh"
    result = subprocess.run(
        ["bash", str(script), str(out), str(EXAMPLES / "c" / "greeter.c"), str(HOSTILE_C)],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    assert result.returncode == 0, f"building the C components failed:\n{result.stderr[-4000:]}"
    return {"greeter": out / "greeter.wasm", "hostile": out / "hostile.wasm"}


async def call(agent: Agent, name: str, payload: dict[str, Any], tenant: str = "tenant-a") -> Any:
    model = next(m for key, m in agent.repository.models.items() if key == (tenant, name))
    return json.loads(await agent.repository.invoke(model, json.dumps(payload)))


async def failure(agent: Agent, name: str, payload: dict[str, Any], tenant: str = "tenant-a") -> GuestFailure:
    with pytest.raises(GuestFailure) as caught:
        await call(agent, name, payload, tenant)
    return caught.value


# --- deploy: what tarsctl sends ---------------------------------------------------------------------


def test_tarsctl_deploys_javascript_as_source_for_the_nodes_to_build(capsys: Any) -> None:
    args = deploy_args(JS_EXAMPLE, dry_run=True, capability="clock.now")
    assert args.func(args) == 0
    configmap, model = yaml.safe_load_all(capsys.readouterr().out)
    assert configmap["data"] == {"function.js": JS_EXAMPLE.read_text()}
    assert model["spec"]["source"] == "configmap://greeter/function.js"
    # What the operator and the agents read back from that ConfigMap is JavaScript, and passes the checks.
    code = code_from_configmap(configmap, "greeter", "function.js")
    assert code.language == "javascript" and code.javascript == JS_EXAMPLE.read_text()
    check_code(code)


def test_tarsctl_refuses_javascript_without_an_exported_handle(tmp_path: Path, capsys: Any) -> None:
    commonjs = tmp_path / "fn.js"
    commonjs.write_text("function handle(input) { return input; }\nmodule.exports = { handle };\n")
    args = deploy_args(commonjs)
    assert args.func(args) == fn.EXIT_INVALID
    assert "refused: fn.js: exports no handle" in capsys.readouterr().err


# --- the examples -----------------------------------------------------------------------------------


async def test_javascript_example_from_configmap_and_file(agent: Agent, configmaps: ConfigMaps, tmp_path: Path) -> None:
    configmaps[("tenant-a", "greeter")] = {"data": {"function.js": JS_EXAMPLE.read_text()}}
    on_node = tmp_path / "greeter.js"  # under the agent's model roots
    on_node.write_text(JS_EXAMPLE.read_text())
    assert await agent.ensure_loaded(
        function_model("js-configmap", source="configmap://greeter/function.js", capabilities=["clock.now"])
    ), agent.repository.failed
    assert await agent.ensure_loaded(function_model("js-file", source=f"file://{on_node}")), agent.repository.failed
    granted = await call(agent, "js-configmap", {"name": "Ada", "lang": "fr"})
    assert granted["language"] == "javascript" and granted["greeting"] == "bonjour, Ada"
    assert isinstance(granted["clock"]["unix"], float)
    refused = await call(agent, "js-file", {"name": "Ada"})
    assert refused["greeting"] == "hello, Ada"
    assert "capability clock.now is not allowed for model tenant-a/js-file" in refused["clock"]["refused"]
    stopped = await failure(agent, "js-file", {"lang": "fr"})
    assert stopped.reason == FailureReason.REJECTED and 'input needs a "name" string' in stopped.public


async def test_c_example_from_file_and_configmap(
    agent: Agent, configmaps: ConfigMaps, c_components: dict[str, Path]
) -> None:
    wasm = c_components["greeter"]
    check_component_bytes(wasm.read_bytes(), wasm.name)  # the world's type, as tarsctl and the operator check it
    configmaps[("tenant-a", "c-greeter")] = {"binaryData": {"fn.wasm": base64.b64encode(wasm.read_bytes()).decode()}}
    assert await agent.ensure_loaded(function_model("c-file", source=f"file://{wasm}", capabilities=["clock.now"])), (
        agent.repository.failed
    )
    assert await agent.ensure_loaded(function_model("c-configmap", source="configmap://c-greeter/fn.wasm")), (
        agent.repository.failed
    )
    granted = await call(agent, "c-file", {"name": "Ada", "lang": "de"})
    assert granted["language"] == "c" and granted["greeting"] == "hallo, Ada"
    assert isinstance(granted["clock"]["unix"], float)
    refused = await call(agent, "c-configmap", {"name": 'A "quoted" name'})
    assert refused["greeting"] == 'hello, A "quoted" name'
    assert "capability clock.now is not allowed for model tenant-a/c-configmap" in refused["clock"]["refused"]
    stopped = await failure(agent, "c-file", {"lang": "fr"})
    assert stopped.reason == FailureReason.REJECTED and 'input needs a "name" string' in stopped.public


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("module.exports = { handle: (s) => s };\n", "exports no handle"),
        ("export function handle(inputJson) {\n  return inputJson +;\n}\n", "SyntaxError"),
        ("throw new Error('top level refuses');\nexport function handle(s) { return s; }\n", "top level refuses"),
    ],
    ids=["commonjs", "syntax-error", "top-level-throws"],
)
async def test_bad_javascript_is_refused_with_the_reason(
    agent: Agent, configmaps: ConfigMaps, source: str, expected: str
) -> None:
    configmaps[("tenant-a", "bad")] = {"data": {"function.js": source}}
    assert not await agent.ensure_loaded(function_model("bad", source="configmap://bad/function.js"))
    error = agent.repository.failed[ModelKey("tenant-a", "bad")]
    assert error.startswith("InvalidFunction: ") and expected in error, error


async def test_an_agent_without_nodejs_says_so_rather_than_blaming_the_function(
    agent: Agent, configmaps: ConfigMaps, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in the tars image: no node or npm on the PATH, no toolchain installed; a source never built here.
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("TARS_JS_TOOLCHAIN", str(tmp_path / "no-toolchain"))
    configmaps[("tenant-a", "js")] = {"data": {"function.js": f"// {tmp_path}\n{JS_EXAMPLE.read_text()}"}}
    assert not await agent.ensure_loaded(function_model("js", source="configmap://js/function.js"))
    error = agent.repository.failed[ModelKey("tenant-a", "js")]
    assert error.startswith("JavaScriptUnavailable: this agent cannot build JavaScript functions: Node.js"), error
    assert "python -m tars_guests.jsbuild" in error  # and what to do instead


# --- hostile functions ------------------------------------------------------------------------------


@pytest.fixture
async def hostile(
    backend: SharedBackend, language: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Agent]:
    """One agent serving the test's hostile function twice: for tenant-a and for tenant-b."""
    agent = make_agent(backend, ConfigMaps())
    if language == "c":
        source = f"file://{request.getfixturevalue('c_components')['hostile']}"
    else:
        hostile_js = tmp_path / "hostile.js"  # under the agent's model roots
        hostile_js.write_text(HOSTILE_JS.read_text())
        source = f"file://{hostile_js}"
    for tenant in ("tenant-a", "tenant-b"):
        model = function_model(language, tenant, source=source, capabilities=["clock.now"])
        assert await agent.ensure_loaded(model), agent.repository.failed
    yield agent
    agent.close()


@pytest.mark.parametrize("language", LANGUAGES)
async def test_host_files_are_not_there(hostile: Agent, language: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    for path in ("/etc/passwd", str(secret)):
        stopped = await failure(hostile, language, {"op": "read_file", "path": path})
        assert stopped.reason == FailureReason.REJECTED  # the guest ran; the sandbox said no
        # C: wasi-libc finds no preopened directory that could hold the path (WASI's ENOTCAPABLE).
        expected = "Capabilities insufficient" if language == "c" else "require=undefined"
        assert expected in stopped.public, stopped.public
        assert "host secret" not in stopped.public and "root:" not in stopped.public


@pytest.mark.parametrize("language", ["javascript"])
async def test_javascript_has_no_way_to_a_listening_host_port(hostile: Agent, language: str) -> None:
    # C is not asked: wasi-libc's preview-1 API (what clang targets here) has no socket() to try.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        stopped = await failure(hostile, "javascript", {"op": "socket", "address": address})
        # The engine keeps a `fetch`, but the component was built without HTTP: calling it traps.
        assert stopped.reason == FailureReason.ERROR and stopped.public == "guest crashed", stopped.public
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected


@pytest.mark.parametrize("language", LANGUAGES)
async def test_host_environment_is_not_there(hostile: Agent, language: str) -> None:
    seen = await call(hostile, language, {"op": "environment"})
    if language == "c":
        assert seen == {"variables": [], "HOME": None}
    else:
        assert seen == {"process": "undefined", "env": None}
    assert os.environ["PATH"] not in json.dumps(seen)


@pytest.mark.parametrize("language", LANGUAGES)
async def test_memory_bomb_hits_the_memory_limit(hostile: Agent, language: str) -> None:
    stopped = await failure(hostile, language, {"op": "memory_bomb"})
    if language == "javascript":
        # SpiderMonkey meets the sandbox's memory limit as a failed allocation and ends the call with
        # its uncatchable "out of memory" error rather than a trap.
        assert stopped.reason == FailureReason.REJECTED and "out of memory" in stopped.public, stopped.public
    else:
        assert stopped.reason == FailureReason.MEMORY, (stopped.public, stopped.detail[-500:])
    assert await call(hostile, language, {"op": "ok"}) == {"ok": True}  # the agent serves the next one


@pytest.mark.parametrize("language", LANGUAGES)
async def test_endless_loop_hits_the_cpu_limit(hostile: Agent, language: str) -> None:
    stopped = await failure(hostile, language, {"op": "spin"})
    assert stopped.reason == FailureReason.TIMEOUT
    assert await call(hostile, language, {"op": "ok"}) == {"ok": True}  # the agent serves the next one


@pytest.mark.parametrize("language", LANGUAGES)
async def test_output_flood_hits_the_output_limit(hostile: Agent, language: str) -> None:
    stopped = await failure(hostile, language, {"op": "flood", "bytes": 1 << 20})
    assert stopped.reason == FailureReason.OUTPUT


@pytest.mark.parametrize("language", LANGUAGES)
async def test_capability_not_allowed_is_refused_and_audited(hostile: Agent, language: str, caplog: Any) -> None:
    with caplog.at_level("INFO", logger="tars_agent.audit"):
        stopped = await failure(hostile, language, {"op": "capability", "name": "knowledge.query"})
    assert stopped.reason == FailureReason.REJECTED
    assert f"capability knowledge.query is not allowed for model tenant-a/{language}" in stopped.public
    audit = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tars_agent.audit"]
    assert {"model": f"tenant-a/{language}", "capability": "knowledge.query", "outcome": "denied"}.items() <= audit[
        -1
    ].items()


@pytest.mark.parametrize("language", LANGUAGES)
async def test_nothing_a_request_leaves_reaches_the_next(hostile: Agent, language: str) -> None:
    secret = secrets.token_hex(16)
    assert await call(hostile, language, {"op": "remember", "secret": secret}) == {"remembered": True}
    for tenant in ("tenant-b", "tenant-a"):
        assert await call(hostile, language, {"op": "recall"}, tenant=tenant) == {"remembered": None}
