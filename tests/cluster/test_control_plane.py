"""The CRDs and the local control plane, on the real kube-apiserver."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures import ControlPlane

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def apply(cp: ControlPlane, namespace: str, obj: dict[str, Any], check: bool = True) -> Any:
    return cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj), check=check)


def tarsmodel(name: str, **spec: Any) -> dict[str, Any]:
    base = {"nodeRef": {"name": "tars"}, "kind": "sentiment", "source": "builtin://sentiment-vader"}
    return {
        "apiVersion": "tars.hyperlight.dev/v1alpha1",
        "kind": "TarsModel",
        "metadata": {"name": name},
        "spec": {**base, **spec},
    }


def test_crds_are_established(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("get", "crd", "-o", "json").stdout
    crds = {c["metadata"]["name"]: c for c in json.loads(out)["items"]}
    for name in ("tarsnodes.tars.hyperlight.dev", "tarsmodels.tars.hyperlight.dev", "clusterkopfpeerings.kopf.dev"):
        conditions = {c["type"]: c["status"] for c in crds[name]["status"]["conditions"]}
        assert conditions["Established"] == "True", name


def test_kubectl_explain_describes_fields(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("explain", "tarsnode.spec.platform").stdout
    assert "HyperlightMicroVM" in out and "hyperlightVersion" in out
    out = control_plane.kubectl("explain", "tarsmodel.spec.scaling.panicWindow").stdout
    assert "Window watched for bursts" in out


def test_examples_are_accepted(control_plane: ControlPlane, namespace: str) -> None:
    out = control_plane.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(EXAMPLES)).stdout
    assert out.count("created") == 10, out


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"scaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must not exceed maxReplicas"),
        ({"scaling": {"scaleToZero": True, "minReplicas": 1}}, "scaleToZero requires minReplicas to be 0"),
        ({"scaling": {"panicWindow": "90s"}}, "panicWindow must be shorter than stableWindow"),
        ({"source": None}, "one of source or function is required"),
        ({"function": {"code": "def handle(x): return x"}}, "function is only allowed with kind function"),
        ({"source": "configmap://fns/guest.py"}, "configmap:// sources are only allowed with kind function"),
        ({"scaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 3}, "replicas": 9}, "replicas must lie"),
        ({"source": "https://huggingface.co/gpt2"}, "spec.source"),
        ({"kind": "vision"}, "spec.kind"),
        ({"scaling": {"target": 0}}, "spec.scaling.target"),
    ],
)
def test_invalid_tarsmodels_are_rejected_by_the_server(
    control_plane: ControlPlane, namespace: str, spec: dict[str, Any], fragment: str
) -> None:
    obj = tarsmodel("bad", **spec)
    obj["spec"] = {k: v for k, v in obj["spec"].items() if v is not None}
    result = apply(control_plane, namespace, obj, check=False)
    assert result.returncode != 0
    assert fragment in result.stderr, result.stderr
    assert "NotFound" in control_plane.kubectl("get", "tarsmodel", "bad", "-n", namespace, check=False).stderr


def test_invalid_tarsnode_is_rejected_by_the_server(control_plane: ControlPlane, namespace: str) -> None:
    obj = {
        "apiVersion": "tars.hyperlight.dev/v1alpha1",
        "kind": "TarsNode",
        "metadata": {"name": "bad"},
        "spec": {"sandbox": {"cpuTimeMs": 5000, "wallTimeoutMs": 1000}},
    }
    result = apply(control_plane, namespace, obj, check=False)
    assert "wallTimeoutMs must be at least cpuTimeMs" in result.stderr


def test_server_applies_defaults(control_plane: ControlPlane, namespace: str) -> None:
    apply(control_plane, namespace, tarsmodel("defaults"))
    got = json.loads(control_plane.kubectl("get", "tarsmodel", "defaults", "-n", namespace, "-o", "json").stdout)
    assert got["spec"]["replicas"] == 1
    assert got["spec"]["scaling"]["stableWindow"] == "60s"
    assert got["spec"]["limits"] == {}


def test_kubectl_scale_and_printer_columns(control_plane: ControlPlane, namespace: str) -> None:
    apply(control_plane, namespace, tarsmodel("scaled"))
    control_plane.kubectl("scale", "tarsmodel/scaled", "--replicas=3", "-n", namespace)
    got = json.loads(control_plane.kubectl("get", "tarsmodel", "scaled", "-n", namespace, "-o", "json").stdout)
    assert got["spec"]["replicas"] == 3
    header = control_plane.kubectl("get", "tarsmodels", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "READY", "NODE", "KIND", "REPLICAS", "AVAILABLE", "AGE"]
    by_category = control_plane.kubectl("get", "tars", "-n", namespace).stdout
    assert "tarsmodel.tars.hyperlight.dev/scaled" in by_category


def _daemonset(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"tars.hyperlight.dev/kvm": "true"},
                    "containers": [{"name": "c", "image": "example.invalid/agent:1"}],
                },
            },
        },
    }


def _wait_for(predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"condition not met within {timeout}s")


def test_daemonset_pods_bind_to_simulated_nodes_and_are_collected(
    control_plane: ControlPlane, namespace: str, simulated_nodes: tuple[str, ...]
) -> None:
    """Proves the controller-manager, the scheduler and kwok all run."""
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}
    apply(control_plane, namespace, owner)
    uid = control_plane.get_json("cm", "owner", "-n", namespace)["metadata"]["uid"]
    ds = _daemonset("probe")
    ds["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]
    apply(control_plane, namespace, ds)

    def running_pods() -> dict[str, str]:
        pods = json.loads(control_plane.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        return {p["spec"].get("nodeName", ""): p["status"].get("phase", "") for p in pods}

    pods = _wait_for(lambda: (p := running_pods()) and set(simulated_nodes) <= set(p) and p)
    assert all(pods[n] in ("Pending", "Running") for n in simulated_nodes)
    _wait_for(lambda: all(running_pods().get(n) == "Running" for n in simulated_nodes))

    control_plane.kubectl("delete", "cm", "owner", "-n", namespace)
    _wait_for(lambda: control_plane.kubectl("get", "ds", "probe", "-n", namespace, check=False).returncode != 0)


def test_example_yaml_matches_the_api(control_plane: ControlPlane) -> None:
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "tarsnode.yaml").read_text()) if d]
    assert docs[0]["kind"] == "TarsNode"
