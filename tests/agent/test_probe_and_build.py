"""KVM probe and backend choice, the guest build cache, and the catalog's extension points."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tars_agent.agent import Agent
from tars_agent.catalog import Catalog, UnknownSource, parse_source
from tars_agent.functions import inline_function_app
from tars_agent.sandbox.probe import BackendUnavailable, KvmProbe, cpu_has_virtualization, probe_kvm, select_backend
from tars_guests.build import GuestBuildError, build_guest, source_digest, wit_dir
from tars_guests.testapps import ECHO_APP

from .conftest import make_agent, tars_model

PROBE = probe_kvm()


def test_cpu_flags() -> None:
    assert cpu_has_virtualization("processor: 0\nflags\t\t: fpu vmx sse\n")
    assert cpu_has_virtualization("flags : svm lm\n")
    assert not cpu_has_virtualization("flags : fpu sse hypervisor\n")


def test_probe_of_a_missing_device(tmp_path: Path) -> None:
    result = probe_kvm(device=str(tmp_path / "kvm"))
    assert not result.usable and "does not exist" in result.reason


def test_probe_on_this_machine_is_consistent() -> None:
    if not PROBE.checks.get("vmx_svm", False):
        assert not PROBE.usable
    assert PROBE.reason


def test_backend_selection() -> None:
    bad = KvmProbe(False, "no vmx/svm")
    good = KvmProbe(True, "a probe Hyperlight sandbox ran")
    assert select_backend("auto", bad) == ("wasmtime", "fell back to wasmtime: no vmx/svm")
    assert select_backend("auto", good)[0] == "hyperlight"
    assert select_backend("wasmtime", good)[0] == "wasmtime"
    assert select_backend("hyperlight", good)[0] == "hyperlight"
    with pytest.raises(BackendUnavailable, match="hyperlight backend requested but Hyperlight cannot run here"):
        select_backend("hyperlight", bad)
    with pytest.raises(BackendUnavailable):
        select_backend("firecracker", good)


@pytest.mark.skipif(not PROBE.usable, reason=f"Hyperlight cannot run here: {PROBE.reason}")
async def test_hyperlight_backend_runs_the_same_guest() -> None:
    from tars_agent.sandbox.hyperlight_backend import HyperlightBackend

    agent = make_agent(HyperlightBackend())  # type: ignore[arg-type]
    try:
        assert await agent.ensure_loaded(tars_model("echo", "builtin://echo", capabilities=["clock.now"]))
        model = agent.repository.find("echo")
        assert model is not None
        out = json.loads(await agent.repository.invoke(model, json.dumps({"call": "clock.now"})))
        assert "unix" in out["result"]
    finally:
        agent.close()


def test_build_is_cached_and_keyed_by_content(tmp_path: Path) -> None:
    first = build_guest(ECHO_APP)
    started = time.perf_counter()
    assert build_guest(ECHO_APP) == first
    assert time.perf_counter() - started < 0.5
    copy = tmp_path / "app"
    copy.mkdir()
    (copy / "app.py").write_text((ECHO_APP / "app.py").read_text())
    assert source_digest(copy, wit_dir(), "function") == source_digest(ECHO_APP, wit_dir(), "function")
    (copy / "app.py").write_text((ECHO_APP / "app.py").read_text() + "\n# changed\n")
    assert source_digest(copy, wit_dir(), "function") != source_digest(ECHO_APP, wit_dir(), "function")


def test_build_without_app_py_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(GuestBuildError, match=r"no app\.py"):
        build_guest(tmp_path)


def test_sources_parse() -> None:
    assert parse_source("builtin://sentiment-vader") == ("builtin", "sentiment-vader", None)
    assert parse_source("file:///models/gpt2") == ("file", "/models/gpt2", Path("/models/gpt2"))
    assert parse_source("configmap://fns/reason.py") == ("configmap", "fns/reason.py", None)
    with pytest.raises(UnknownSource):
        parse_source("https://huggingface.co/x")


def test_catalog_refuses_unknown_entries() -> None:
    catalog = Catalog()
    with pytest.raises(UnknownSource, match="no builtin model"):
        catalog.factory_for(tars_model("x", "builtin://nope").spec)
    with pytest.raises(UnknownSource, match="cannot load file://"):
        catalog.factory_for(tars_model("x", "file:///models/x").spec)
    with pytest.raises(UnknownSource, match="cannot build inline functions"):
        catalog.factory_for(tars_model("x", None, function={"code": "def handle(x):\n    return x\n"}).spec)  # type: ignore[arg-type]


def test_inline_function_template_compiles() -> None:
    compile(inline_function_app("def handle(x):\n    return x\n"), "app.py", "exec")


async def test_inline_function_is_built_and_served(agent: Agent) -> None:
    code = (
        "def handle(request):\n"
        "    now = call_tool('clock.now')\n"
        "    return {'doubled': [2 * n for n in request['numbers']], 'has_time': 'unix' in now}\n"
    )
    model = tars_model("double", None, function={"code": code}, capabilities=["clock.now"])  # type: ignore[arg-type]
    assert await agent.ensure_loaded(model), agent.repository.failed
    loaded = agent.repository.find("double")
    assert loaded is not None
    out = json.loads(await agent.repository.invoke(loaded, json.dumps({"numbers": [1, 2, 3]})))
    assert out == {"doubled": [2, 4, 6], "has_time": True}
