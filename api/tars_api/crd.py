"""Generates the CustomResourceDefinitions in crds/ from the pydantic models.

pydantic emits JSON Schema 2020-12; the API server wants a structural OpenAPI v3.0 schema. The
conversion inlines $refs, turns Optional[X] into a non-required X, Literal consts into enums, numeric
exclusive bounds into the v3.0 boolean form, and drops what structural schemas forbid.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from tars_api.labels import GENERATED_BY_ANNOTATION, PART_OF
from tars_api.meta import GROUP, QUALIFIED_NAME_PATTERN, VERSION
from tars_api.tarsmodel import TarsModel
from tars_api.tarsnode import TarsNode

CATEGORY = "tars"
_DROPPED_KEYS = {"title", "$defs", "additionalProperties_false"}
_KEY_SHAPES = {
    QUALIFIED_NAME_PATTERN: "a label key: an optional DNS-subdomain prefix and '/', then a name of at most 63",
}


def _ready_column(description: str) -> dict[str, Any]:
    return {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": description,
    }


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "TarsNode": [
        _ready_column("Whether the node's agents are ready."),
        {"name": "Platform", "type": "string", "jsonPath": ".spec.platform.type"},
        {"name": "Backend", "type": "string", "jsonPath": ".status.backend"},
        {"name": "Agents", "type": "integer", "jsonPath": ".status.readyAgents"},
        {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredAgents"},
        _AGE,
    ],
    "TarsModel": [
        _ready_column("Whether the model answers requests."),
        {"name": "Node", "type": "string", "jsonPath": ".spec.nodeRef.name"},
        {"name": "Kind", "type": "string", "jsonPath": ".spec.kind"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Available", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Source", "type": "string", "jsonPath": ".spec.source", "priority": 1},
        _AGE,
    ],
}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        # Keys beside a $ref (description, default) describe this use and win over the target's.
        node = {**_resolve(target, defs), **{k: _resolve(v, defs) for k, v in node.items()}}
        return _structural(node)
    return _structural({k: _resolve(v, defs) for k, v in node.items()})


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    if "anyOf" in node:
        variants = [v for v in node["anyOf"] if v.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", "") is None:
            del rest["default"]
        if rest.get("x-kubernetes-int-or-string"):
            # Each variant's value checks apply to values of its own type (a pattern to strings).
            node = {**{k: v for variant in variants for k, v in variant.items() if k != "type"}, **rest}
        elif len(variants) == 1:
            node = {**variants[0], **rest}
        else:
            raise ValueError(f"cannot express a union in a structural schema: {node}")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if "patternProperties" in node:
        node = _keys_by_rule(node)
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node[bound], bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    for key in ("title", "$defs"):
        node.pop(key, None)
    return node


def _keys_by_rule(node: dict[str, Any]) -> dict[str, Any]:
    """A map whose keys are constrained (pydantic: patternProperties, propertyNames) as a structural
    schema allows it: one additionalProperties schema, and a CEL rule over the keys."""
    ((pattern, values),) = node.pop("patternProperties").items()
    max_length = node.pop("propertyNames", {}).get("maxLength")
    # A raw CEL string: the pattern's backslashes are the regex's, not escapes.
    checks = ([f"k.size() <= {max_length}"] if max_length else []) + [f"k.matches(r'{pattern}')"]
    shape = _KEY_SHAPES.get(pattern, f"matching {pattern}")
    rule = {"rule": f"self.all(k, {' && '.join(checks)})", "message": f"every key must be {shape}"}
    node["additionalProperties"] = values
    node["x-kubernetes-validations"] = [*node.get("x-kubernetes-validations", []), rule]
    return node


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3.0 schema of a pydantic model, as a CRD wants it."""
    raw = model.model_json_schema(by_alias=True)
    resolved: dict[str, Any] = _resolve(raw, raw.get("$defs", {}))
    return resolved


_RULES = "x-kubernetes-validations"


def crd_for(resource: type[TarsNode] | type[TarsModel]) -> dict[str, Any]:
    kind = resource.kind_name
    schema = openapi_schema(resource)
    props = schema["properties"]
    spec_schema = props["spec"]
    status_schema = props["status"]
    singular = kind.lower()
    subresources: dict[str, Any] = {"status": {}}
    if resource is TarsModel:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{resource.plural}.{GROUP}",
            "labels": {PART_OF: "tars"},
            "annotations": {GENERATED_BY_ANNOTATION: "tarsctl crds generate"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": resource.plural,
                "singular": singular,
                "shortNames": resource.short_names,
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": PRINTER_COLUMNS[kind],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": schema.get("description", ""),
                            **({"x-kubernetes-validations": rules} if (rules := schema.get(_RULES)) else {}),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": f"API version: {GROUP}/{VERSION}."},
                                "kind": {"type": "string", "description": f"Always {kind}."},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def _peering_crd(kind: str, scope: str) -> dict[str, Any]:
    """kopf's peering resources, so two operator replicas can agree on which one acts."""
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev", "labels": {PART_OF: "tars"}},
        "spec": {
            "group": "kopf.dev",
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Operator replicas that take part in kopf peering.",
                            "properties": {
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated by `tarsctl crds generate` from the pydantic models in api/tars_api. Do not edit.\n"


def _dump(obj: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(obj, sort_keys=False, width=100)


def render_crds() -> dict[str, str]:
    """File name -> YAML text for every file in crds/."""
    files = {f"{GROUP}_{res.plural}.yaml": _dump(crd_for(res)) for res in (TarsNode, TarsModel)}
    files["kopf.dev_peerings.yaml"] = HEADER + "---\n".join(
        yaml.safe_dump(_peering_crd(kind, scope), sort_keys=False, width=100)
        for kind, scope in (("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced"))
    )
    return files
