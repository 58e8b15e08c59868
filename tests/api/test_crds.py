"""crds/ is generated from the API models, structurally sound, and up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tars_api import TarsModel, TarsNode
from tars_api.crd import crd_for, render_crds
from tarsctl.crds import stale_files

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_crds_directory_is_not_stale() -> None:
    assert stale_files(CRDS) == [], "run `tarsctl crds generate` (or `make crds`) and commit crds/"


def test_every_generated_file_is_in_crds() -> None:
    assert sorted(p.name for p in CRDS.glob("*.yaml")) == sorted(render_crds())


def _walk(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(schema, dict):
        out.append((path, schema))
        for key, sub in schema.get("properties", {}).items():
            out += _walk(sub, f"{path}.{key}")
        if isinstance(schema.get("items"), dict):
            out += _walk(schema["items"], f"{path}[]")
        if isinstance(schema.get("additionalProperties"), dict):
            out += _walk(schema["additionalProperties"], f"{path}{{}}")
    return out


def test_schemas_are_structural_and_described() -> None:
    for resource in (TarsNode, TarsModel):
        root = crd_for(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(root["properties"]["spec"], ".spec"):
            assert not {"$ref", "anyOf", "oneOf", "allOf", "const", "title"} & node.keys(), path
            assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
            assert node.get("description") or path.endswith(("[]", "{}")), f"{path} has no description"


def test_tarsmodel_has_scale_subresource_and_cel_rules() -> None:
    version = crd_for(TarsModel)["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    rules += [r["rule"] for r in spec["properties"]["scaling"]["x-kubernetes-validations"]]
    assert "self.minReplicas <= self.maxReplicas" in rules
    assert "!self.scaleToZero || self.minReplicas == 0" in rules
    assert spec["properties"]["scaling"]["properties"]["target"]["exclusiveMinimum"] is True


def test_crd_files_parse_as_yaml() -> None:
    for path in CRDS.glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert all(d["kind"] == "CustomResourceDefinition" for d in docs)
