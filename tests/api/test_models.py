"""The API models reject what the CRD schema rejects, with messages that name the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tars_api import TarsModel, TarsNode
from tars_api.meta import parse_duration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def model(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "tars.hyperlight.dev/v1alpha1",
        "kind": "TarsModel",
        "metadata": {"name": "m"},
        "spec": {"nodeRef": {"name": "tars"}, "kind": "sentiment", "source": "builtin://sentiment-vader"},
    }
    base["spec"].update(spec)
    return base


def node(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "tars.hyperlight.dev/v1alpha1", "kind": "TarsNode", "metadata": {"name": "n"}, "spec": spec}


def error_of(resource: type[TarsModel] | type[TarsNode], obj: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        resource.model_validate(obj)
    return str(caught.value)


def test_every_example_is_valid() -> None:
    kinds = {"TarsNode": TarsNode, "TarsModel": TarsModel}
    docs = [d for f in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    assert {d["kind"] for d in docs} == {"TarsNode", "TarsModel"}
    assert len([d for d in docs if d["kind"] == "TarsModel"]) == 9
    for doc in docs:
        kinds[doc["kind"]].model_validate(doc)


def test_defaults_are_filled() -> None:
    parsed = TarsModel.model_validate(model())
    assert parsed.spec.replicas == 1
    assert parsed.spec.scaling.stable_window == "60s"
    assert parsed.spec.scaling.panic_threshold == 200
    tn = TarsNode.model_validate(node())
    assert tn.spec.platform.type == "Auto"
    assert tn.spec.sandbox.memory_mi_b == 256
    assert tn.spec.agent.port == 8080


def test_wire_round_trip_uses_camel_case() -> None:
    wire = TarsModel.model_validate(model(memoryMiB=64)).wire()
    assert wire["spec"]["nodeRef"] == {"name": "tars"}
    assert wire["spec"]["memoryMiB"] == 64
    assert "scaleToZeroGracePeriod" in wire["spec"]["scaling"]
    assert TarsModel.model_validate(wire).wire() == wire


@pytest.mark.parametrize(
    ("resource", "obj", "fragment"),
    [
        (TarsModel, model(scaling={"minReplicas": 5, "maxReplicas": 2}), "minReplicas must not exceed maxReplicas"),
        (TarsModel, model(scaling={"scaleToZero": True, "minReplicas": 1}), "scaleToZero requires minReplicas"),
        (TarsModel, model(scaling={"panicWindow": "90s"}), "panicWindow must be shorter than stableWindow"),
        (TarsModel, model(scaling={"target": 0}), "target"),
        (TarsModel, model(scaling={"stableWindow": "soon"}), "stableWindow"),
        (TarsModel, model(source=None), "one of source or function is required"),
        (TarsModel, model(function={"code": "def handle(x): return x"}), "function is only allowed with kind function"),
        (TarsModel, model(source="configmap://fns/guest.py"), "configmap:// sources are only allowed"),
        (TarsModel, model(source="https://huggingface.co/x"), "source"),
        (TarsModel, model(kind="vision"), "kind"),
        (TarsModel, model(replicas=-1), "replicas"),
        (TarsModel, model(capabilities=["net.connect"]), "capabilities"),
        (
            TarsModel,
            model(scaling={"enabled": True, "minReplicas": 2, "maxReplicas": 3}, replicas=9),
            "replicas must lie within",
        ),
        (TarsModel, model(replica=2), "replica"),
        (TarsNode, node(sandbox={"cpuTimeMs": 5000, "wallTimeoutMs": 1000}), "wallTimeoutMs must be at least"),
        (TarsNode, node(platform={"type": "Firecracker"}), "platform.type"),
        (TarsNode, node(capabilities=["time_travel"]), "capabilities"),
        (TarsNode, node(agent={"port": 80}), "agent.port"),
        (TarsNode, node(warmPoolSize=-1), "warmPoolSize"),
    ],
)
def test_invalid_objects_are_rejected_naming_the_field(
    resource: type[TarsModel] | type[TarsNode], obj: dict[str, Any], fragment: str
) -> None:
    assert fragment in error_of(resource, obj)


@pytest.mark.parametrize(
    "spec",
    [
        {"scaling": {"minReplicas": 0, "maxReplicas": 1, "scaleToZero": True}},
        {"scaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3}, "replicas": 3},
        {"kind": "function", "source": None, "function": {"code": "def handle(x):\n    return x\n"}},
        {"kind": "function", "source": "configmap://fns/guest.py"},
        {"kind": "text-generation", "source": "file:///var/lib/tars/models/edge-tiny"},
    ],
)
def test_valid_edge_cases_are_accepted(spec: dict[str, Any]) -> None:
    TarsModel.model_validate(model(**spec))


def test_bad_input_changes_nothing() -> None:
    obj = model(scaling={"minReplicas": 5, "maxReplicas": 2})
    before = copy.deepcopy(obj)
    error_of(TarsModel, obj)
    assert obj == before


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("1m30s", 90), ("2h", 7200)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("30 seconds")
