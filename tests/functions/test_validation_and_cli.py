"""The checks every function passes (pure, shared by operator, agent and tarsctl), and tarsctl fn."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from tars_api import TarsModel
from tars_api.functions import (
    FunctionCode,
    InvalidFunction,
    check_code,
    check_python,
    code_from_configmap,
    validate_function,
)
from tarsctl import fn
from tests.functions.conftest import BROKEN_PYTHON, USER_PYTHON


def spec(**fields: Any) -> Any:
    body = {"nodeRef": {"name": "edge"}, "kind": "function", **fields}
    return TarsModel.model_validate({"metadata": {"name": "f", "namespace": "ns"}, "spec": body}).spec


def test_python_syntax_error_names_the_line_without_running_anything(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('x')\ndef handle(input):\n    return (\n"
    with pytest.raises(InvalidFunction, match=r"fn\.py: line 3, column \d+: "):
        check_python(code, "fn.py")
    check_python(code.rsplit("\n", 2)[0] + "\n    return 1\n", "fn.py")  # valid now, and still not run
    assert not marker.exists()


def test_handle_may_be_defined_assigned_or_imported() -> None:
    for code in ("def handle(x):\n    return x\n", "handle = lambda x: x\n", "from json import loads as handle\n"):
        check_python(code)
    with pytest.raises(InvalidFunction, match="defines no handle"):
        check_python("def helper(x):\n    def handle(y):\n        return y\n    return x\n")


def test_configmap_keys_choose_the_language() -> None:
    cm = {"data": {"f.py": USER_PYTHON}, "binaryData": {"f.wasm": base64.b64encode(b"\0asm").decode()}}
    assert code_from_configmap(cm, "cm", "f.py").language == "python"
    assert code_from_configmap(cm, "cm", "f.wasm").wasm == b"\0asm"
    with pytest.raises(InvalidFunction, match=r"no such key .*keys: f\.py, f\.wasm"):
        code_from_configmap(cm, "cm", "other.py")
    with pytest.raises(InvalidFunction, match="must be stored in binaryData"):
        code_from_configmap({"data": {"g.wasm": "text"}}, "cm", "g.wasm")


def test_validate_function_covers_inline_and_configmap_sources() -> None:
    configmaps = {("ns", "cm"): {"data": {"function.py": BROKEN_PYTHON}}}

    def read(namespace: str, name: str) -> Any:
        return configmaps.get((namespace, name))

    assert validate_function(spec(function={"code": USER_PYTHON}), "ns", read) is None
    assert "spec.function.code: line 2" in str(validate_function(spec(function={"code": BROKEN_PYTHON}), "ns", read))
    assert "configmap cm/function.py: line 2" in str(
        validate_function(spec(source="configmap://cm/function.py"), "ns", read)
    )
    assert "not found in namespace ns" in str(validate_function(spec(source="configmap://gone/f.py"), "ns", read))
    # Sources on the node are the agent's to check; other kinds are not functions.
    assert validate_function(spec(source="file:///fns/f.py"), "ns", read) is None
    assert validate_function(spec(kind="sentiment", source="builtin://sentiment-vader"), "ns", read) is None


def test_the_rust_example_passes_the_component_checks(components: dict[str, Path]) -> None:
    check_code(FunctionCode("wasm", wasm=components["textstats"].read_bytes()))


def deploy_args(file: Path, **extra: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    fn.register(parser.add_subparsers())
    argv = ["fn", "deploy", str(file), "--name", "greeter", "--node", "edge", "--namespace", "team"]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)] if value is not True else [f"--{key.replace('_', '-')}"]
    return parser.parse_args(argv)


def test_tarsctl_fn_deploy_refuses_a_syntax_error_with_its_line(tmp_path: Path, capsys: Any) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text(BROKEN_PYTHON)
    args = deploy_args(broken)
    assert args.func(args) == fn.EXIT_INVALID
    err = capsys.readouterr().err
    assert "refused: broken.py: line 2" in err and "was never closed" in err


def test_tarsctl_fn_deploy_dry_run_prints_a_configmap_and_a_tarsmodel(
    tmp_path: Path, capsys: Any, components: dict[str, Path]
) -> None:
    args = deploy_args(components["textstats"], dry_run=True, capability="clock.now", cpu_time_ms=250)
    assert args.func(args) == 0
    configmap, model = yaml.safe_load_all(capsys.readouterr().out)
    assert base64.b64decode(configmap["binaryData"]["function.wasm"]) == components["textstats"].read_bytes()
    assert model["spec"] == {
        "nodeRef": {"name": "edge"},
        "kind": "function",
        "source": "configmap://greeter/function.wasm",
        "replicas": 1,
        "capabilities": ["clock.now"],
        "limits": {"cpuTimeMs": 250},
    }
    assert model["metadata"] == {"name": "greeter", "namespace": "team"}
