"""Objects that cannot be realised are refused, by pydantic and by the real API server alike.

Each case here was accepted before (issue 17, items 3, 4 and 10): a name the operator cannot turn
into a Service, a negative quantity, a bad label key, an image that is no reference, a file://
source that steps out of its directory, a ConfigMap key "..", a grace period of 11,000 years.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from tars_api import TarsModel, TarsNode
from tars_api.access import ANONYMOUS, Identity, authorize
from tests.fixtures import ControlPlane

API = "tars.hyperlight.dev/v1alpha1"


def model(name: str = "m", **spec: Any) -> dict[str, Any]:
    base = {"nodeRef": {"name": "tars"}, "kind": "sentiment", "source": "builtin://sentiment-vader"}
    return {"apiVersion": API, "kind": "TarsModel", "metadata": {"name": name}, "spec": {**base, **spec}}


def node(name: str = "n", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "TarsNode", "metadata": {"name": name}, "spec": spec}


def agent(**fields: Any) -> dict[str, Any]:
    return node(agent=fields)


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("model name of 53", model("m" * 53), "at most 52 characters"),
    ("model name with dots", model("a.b"), "metadata.name of a TarsModel"),
    ("node name of 58", node("n" * 58), "at most 57 characters"),
    ("node name with dots", node("a.b"), "metadata.name of a TarsNode"),
    ("node name starting with a digit", node("1tars"), "starting with a letter"),
    ("negative memory", agent(resources={"limits": {"memory": "-1Gi"}}), "limits"),
    ("negative integer cpu", agent(resources={"requests": {"cpu": -2}}), "requests"),
    ("no quantity", agent(resources={"requests": {"cpu": "lots"}}), "requests"),
    ("bad resource name", agent(resources={"requests": {"bad key!": "1"}}), "requests"),
    ("bad nodeSelector key", node(nodeSelector={"-bad/key-": "x"}), "nodeSelector"),
    ("bad nodeSelector value", node(nodeSelector={"zone": "a b"}), "nodeSelector"),
    ("bad toleration key", node(tolerations=[{"key": "no spaces allowed", "operator": "Exists"}]), "key"),
    ("toleration without key", node(tolerations=[{"operator": "Equal", "value": "x"}]), "without a key"),
    ("Exists with a value", node(tolerations=[{"key": "k", "operator": "Exists", "value": "v"}]), "Exists"),
    ("image with spaces", agent(image="tars agent:1"), "image"),
    ("image in upper case", agent(image="ghcr.io/Tars/Agent:1"), "image"),
    ("tls secret with slash", agent(tlsSecretName="a/b"), "tlsSecretName"),
    ("gRPC on the HTTP port", agent(port=9000, grpcPort=9000), "grpcPort must differ from port"),
    ("gRPC on the default HTTP port", agent(grpcPort=8080), "grpcPort must differ from port"),
    ("file source with ..", model(source="file:///../../etc/passwd"), "source"),
    ("file source with inner ..", model(source="file:///var/lib/tars/../../etc/shadow"), "source"),
    ("file source with .", model(source="file:///var/./lib"), "source"),
    ("configmap key ..", model(kind="function", source="configmap://fns/.."), "source"),
    ("configmap key .", model(kind="function", source="configmap://fns/."), "source"),
    ("huge grace period", model(scaling={"scaleToZeroGracePeriod": "99999999h"}), "scaleToZeroGracePeriod"),
    ("long stable window", model(scaling={"stableWindow": "2h"}), "stableWindow"),
    ("relative model root", node(modelRoots=["models"]), "modelRoots"),
    ("model root with ..", node(modelRoots=["/var/lib/../../etc"]), "modelRoots"),
    ("model root /", node(modelRoots=["/"]), "modelRoots"),
]

ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("model name of 52", model("m" * 52)),
    ("node name of 57", node("n" * 57)),
    ("requests", agent(resources={"requests": {"cpu": "250m", "memory": 512, "example.com/gpu": "1"}})),
    ("limits", agent(resources={"limits": {"memory": "1.5Gi", "ephemeral-storage": "2e9"}})),
    ("label keys", node(nodeSelector={"topology.kubernetes.io/zone": "zone-1", "gpu": ""})),
    ("tolerations", node(tolerations=[{"operator": "Exists"}, {"key": "example.com/t", "value": "v_1.2"}])),
    ("images", agent(image="localhost:5000/tars/agent:dev-1.2@sha256:" + "a" * 64)),
    ("plain image", agent(image="tars-agent")),
    ("native front", agent(nativeHttp=True)),
    ("native front with TLS", agent(nativeHttp=True, tlsSecretName="tls")),
    ("file source", model(kind="text-generation", source="file:///var/lib/tars/models/..edge/tiny.gguf")),
    ("configmap key with a dot", model(kind="function", source="configmap://fns/.guest.py")),
    ("model roots", node(modelRoots=["/var/lib/tars/models", "/srv/models/"])),
    ("grace period of a day", model(scaling={"scaleToZeroGracePeriod": "24h"})),
]


def _resource(obj: dict[str, Any]) -> type[TarsModel] | type[TarsNode]:
    return TarsModel if obj["kind"] == "TarsModel" else TarsNode


@pytest.mark.parametrize(("obj", "fragment"), [(o, f) for _, o, f in REFUSED], ids=[c[0] for c in REFUSED])
def test_pydantic_refuses(obj: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _resource(obj).model_validate(obj)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("obj", [o for _, o in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_pydantic_accepts(obj: dict[str, Any]) -> None:
    _resource(obj).model_validate(obj)


def _dry_run(cp: ControlPlane, namespace: str, obj: dict[str, Any]) -> tuple[bool, str]:
    result = cp.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(obj), check=False)
    return result.returncode == 0, result.stderr


def test_the_api_server_refuses_what_cannot_be_realised(control_plane: ControlPlane, namespace: str) -> None:
    accepted_by_server = []
    for what, obj, fragment in REFUSED:
        ok, stderr = _dry_run(control_plane, namespace, obj)
        if ok:
            accepted_by_server.append(what)
        else:
            assert fragment in stderr or "Invalid value" in stderr, (what, stderr)
    assert accepted_by_server == []


def test_the_api_server_accepts_the_edge_cases(control_plane: ControlPlane, namespace: str) -> None:
    outcomes = {what: _dry_run(control_plane, namespace, obj) for what, obj in ACCEPTED}
    assert {what: stderr for what, (ok, stderr) in outcomes.items() if not ok} == {}


def test_a_model_without_access_admits_only_its_own_namespace() -> None:
    tm = TarsModel.model_validate(model())
    assert tm.spec.access is None
    assert TarsNode.model_validate(node()).spec.agent.default_access == "namespace"
    own = Identity("serviceaccount", name="client", namespace="default")
    other = Identity("serviceaccount", name="client", namespace="elsewhere")
    assert authorize(own, None, "default").allowed
    assert authorize(other, None, "default").status == 403
    assert authorize(ANONYMOUS, None, "default").status == 401
