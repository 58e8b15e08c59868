"""Users' functions through the operator on the real local control plane, served by a real tars-agent
in cluster mode: ``tarsctl fn deploy`` (configmap://), placement, the agent reading the ConfigMap,
``tarsctl fn invoke``; and bad functions applied anyway, which the operator marks Degraded
(InvalidFunction) and places nowhere."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tarsctl import fn
from tests.fixtures import ControlPlane, eventually
from tests.functions.conftest import BROKEN_PYTHON, USER_PYTHON

T = TypeVar("T")
pytestmark = pytest.mark.usefixtures("operator")
TARSNODE = {"apiVersion": "tars.hyperlight.dev/v1alpha1", "kind": "TarsNode", "metadata": {"name": "tars"}, "spec": {}}


def apply(cp: ControlPlane, namespace: str, obj: dict[str, Any]) -> None:
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), {})


def run_tarsctl_fn(*argv: str) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    fn.register(parser.add_subparsers())
    args = parser.parse_args(["fn", *argv])
    result: int = args.func(args)
    return result


def test_functions_deployed_with_tarsctl_run_on_a_real_agent(
    control_plane: ControlPlane,
    namespace: str,
    cluster_agent: str,
    components: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    apply(control_plane, namespace, TARSNODE)
    greeter = tmp_path / "greeter.py"
    greeter.write_text(USER_PYTHON)
    common = ["--node", "tars", "--namespace", namespace, "--capability", "clock.now", "--wait", "240"]
    assert run_tarsctl_fn("deploy", str(greeter), "--name", "greeter", *common) == 0, capsys.readouterr().err
    assert run_tarsctl_fn("deploy", str(components["textstats"]), "--name", "stats", *common) == 0
    capsys.readouterr()

    model = control_plane.get_json("tarsmodel", "greeter", "-n", namespace)
    assert model["spec"]["source"] == "configmap://greeter/function.py"
    assert condition(model, "Ready")["status"] == "True"

    assert (
        run_tarsctl_fn("invoke", "greeter", "--data", '{"text": "tars", "lang": "de"}', "--agent", cluster_agent) == 0
    )
    assert json.loads(capsys.readouterr().out) == {
        "greeting": "hallo",
        "upper": "TARS",
        "length": 4,
        "clock_seen": True,
    }
    assert run_tarsctl_fn("invoke", "stats", "--data", '{"text": "a b a"}', "--agent", cluster_agent) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["language"] == "rust" and stats["top"][0] == {"word": "a", "count": 2}


def test_bad_functions_applied_anyway_are_degraded_and_never_placed(
    control_plane: ControlPlane, namespace: str, cluster_agent: str
) -> None:
    apply(control_plane, namespace, TARSNODE)
    configmap: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "bad"},
        "data": {"f.py": BROKEN_PYTHON},
    }
    apply(control_plane, namespace, configmap)
    base = {"apiVersion": "tars.hyperlight.dev/v1alpha1", "kind": "TarsModel"}
    bad_specs: dict[str, dict[str, Any]] = {
        "inline-bad": {"function": {"code": BROKEN_PYTHON}},
        "configmap-bad": {"source": "configmap://bad/f.py"},
    }
    for name, spec in bad_specs.items():
        body = {"nodeRef": {"name": "tars"}, "kind": "function", **spec}
        apply(control_plane, namespace, {**base, "metadata": {"name": name}, "spec": body})

    expected = {"inline-bad": "spec.function.code: line 2", "configmap-bad": "configmap bad/f.py: line 2"}
    for name, where in expected.items():

        def invalid(model_name: str = name) -> dict[str, Any] | None:
            found: dict[str, Any] = control_plane.get_json("tarsmodel", model_name, "-n", namespace)
            return found if condition(found, "Degraded").get("reason") == "InvalidFunction" else None

        model = eventually(invalid, what=f"{name} Degraded")
        assert model is not None
        degraded = condition(model, "Degraded")
        assert degraded["status"] == "True" and where in degraded["message"], degraded
        assert "was never closed" in degraded["message"]
        assert condition(model, "Ready")["status"] == "False"
        assert model["status"]["placements"] == [] and model["status"]["replicas"] == 0
        # Asked for it by name, the agent (which would load a valid model on demand) refuses it too.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(
                urllib.request.Request(f"{cluster_agent}/v1/functions/{name}:invoke", data=b"{}", method="POST")
            )
        assert refused.value.code == 404

    # Fixing the ConfigMap is enough: the next reconcile (at most the 30 s safety net, whose timer
    # runs late on a loaded machine) accepts it.
    fixed = {**configmap, "data": {"f.py": "def handle(input):\n    return {'fixed': True}\n"}}
    apply(control_plane, namespace, fixed)
    eventually(
        lambda: (
            condition(control_plane.get_json("tarsmodel", "configmap-bad", "-n", namespace), "Degraded").get("status")
            == "False"
        ),
        timeout=120,
        what="configmap-bad accepted once fixed",
    )
