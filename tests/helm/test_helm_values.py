"""values.yaml is documented and complete; values.schema.json is strict and rejects bad values clearly."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from chart_support import CHART, Helm

SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())

# Objects handed to Kubernetes (or Prometheus) as they are; the API server validates their insides.
PASS_THROUGH = {
    "global",
    "operator.affinity",
    "gateway.affinity",
    "operator.extraEnv[]",
    "gateway.extraEnv[]",
    "operator.tolerations[]",
    "gateway.tolerations[]",
    "operator.topologySpreadConstraints[].labelSelector",
    "prometheusRule.additionalRules[]",
}


def _objects(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if schema.get("type") == "object":
        found.append((path, schema))
    for name, sub in schema.get("properties", {}).items():
        found += _objects(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        found += _objects(schema["items"], f"{path}[]")
    return found


def _jsonschema() -> Any:
    # A dev dependency; helm itself enforces the schema in the tests further down.
    import jsonschema

    return jsonschema


def test_schema_is_draft_07_and_valid() -> None:
    jsonschema = _jsonschema()
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_default_values_satisfy_the_schema() -> None:
    jsonschema = _jsonschema()
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)


def test_every_object_level_rejects_unknown_keys() -> None:
    for path, schema in _objects(SCHEMA):
        if "properties" in schema:
            assert schema.get("additionalProperties") is False, f"{path or '<root>'} accepts unknown keys"
        elif path not in PASS_THROUGH:
            # Maps (labels, annotations, resources) must still say what their values are.
            assert isinstance(schema.get("additionalProperties"), dict), f"{path} is an unchecked object"


# Kubernetes-shaped values: the schema lists their optional fields, the defaults set only some.
KUBERNETES_SHAPED = {
    "operator.podSecurityContext.",
    "operator.containerSecurityContext.",
    "operator.resources.",
    "gateway.resources.",
}


def test_every_schema_property_has_a_default_in_values_yaml() -> None:
    def walk(schema: dict[str, Any], values: Any, path: str) -> None:
        if path in KUBERNETES_SHAPED:
            return
        for name, sub in schema.get("properties", {}).items():
            if name == "global":
                continue
            assert isinstance(values, dict) and name in values, f"{path}{name} is missing from values.yaml"
            walk(sub, values[name], f"{path}{name}.")

    walk(SCHEMA, VALUES, "")


_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w./-]*):")


def test_every_value_is_commented() -> None:
    """Every key has a comment above it. A `# --` comment documents a value, and its insides
    (the default object or list) need no comments of their own; a plain comment introduces a
    section whose keys are documented one by one."""
    documented_blocks: list[int] = []  # indents of keys whose whole value is documented
    comments: list[str] = []  # the comment lines right above the current line
    undocumented = []
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            comments = []
            continue
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        indent = len(line) - len(line.lstrip())
        while documented_blocks and indent <= documented_blocks[-1]:
            documented_blocks.pop()
        match = _KEY.match(line)
        if match and not documented_blocks:
            if not comments:
                undocumented.append(f"line {number}: {match['key']}")
            elif any(c.startswith("# --") for c in comments):
                documented_blocks.append(indent)
        comments = []
    assert not undocumented, "values without a comment: " + ", ".join(undocumented)


BAD_VALUES = [
    ({"operator": {"replicas": 0}}, "at '/operator/replicas': minimum: got 0, want 1"),
    ({"operator": {"replicas": "2"}}, "at '/operator/replicas': got string, want integer"),
    ({"operator": {"replica": 2}}, "at '/operator': additional properties 'replica' not allowed"),
    ({"operatr": {}}, "additional properties 'operatr' not allowed"),
    ({"operator": {"logLevel": "verbose"}}, "value must be one of 'debug', 'info', 'warning', 'error'"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of 'Always'"),
    ({"image": {"digest": "latest"}}, "at '/image/digest': 'latest' does not match pattern"),
    ({"operator": {"healthPort": 80}}, "at '/operator/healthPort': minimum: got 80, want 1,024"),
    ({"operator": {"peering": {"name": "Tars_Peering"}}}, "at '/operator/peering/name': 'Tars_Peering' does not match"),
    ({"operator": {"watchNamespaces": ["a", "a"]}}, "at '/operator/watchNamespaces': items at 0 and 1 are equal"),
    ({"operator": {"resources": {"limits": {"memory": "lots"}}}}, "at '/operator/resources/limits/memory'"),
    (
        {"operator": {"containerSecurityContext": {"readOnlyRootFs": True}}},
        "additional properties 'readOnlyRootFs' not allowed",
    ),
    (
        {"operator": {"podSecurityContext": {"seccompProfile": {"type": "Default"}}}},
        "value must be one of 'RuntimeDefault', 'Localhost', 'Unconfined'",
    ),
    (
        {"operator": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone"}]}},
        "missing property 'whenUnsatisfiable'",
    ),
    ({"operator": {"nodeSelector": {"kvm": True}}}, "at '/operator/nodeSelector/kvm': got boolean, want string"),
    ({"serviceMonitor": {"interval": "30 seconds"}}, "at '/serviceMonitor/interval': '30 seconds' does not match"),
    ({"prometheusRule": {"guestFailureRatio": {"threshold": 1.5}}}, "maximum: got 1.5, want 1"),
    (
        {"prometheusRule": {"agentMissing": {"severity": "page"}}},
        "at '/prometheusRule/agentMissing/severity': value must be one of 'critical', 'warning', 'info'",
    ),
    ({"prometheusRule": {"latency": {"modelSloSeconds": {"Sentiment": 0.05}}}}, "does not match pattern"),
    ({"samples": {"platform": "KVM"}}, "value must be one of 'Auto', 'HyperlightMicroVM', 'Wasmtime'"),
    ({"gateway": {"port": 70000}}, "at '/gateway/port': maximum: got 70,000, want 65,535"),
    ({"metrics": {"service": {"type": "Ingress"}}}, "value must be one of 'ClusterIP', 'NodePort', 'LoadBalancer'"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_schema_rejects_bad_values(helm: Helm, values: dict[str, Any], message: str) -> None:
    error = helm.template_error(values)
    assert "values don't meet the specifications of the schema" in error
    assert message in error


def test_decimal_strings_from_set_are_accepted_for_thresholds(helm: Helm) -> None:
    # `--set x=0.1` gives helm a string; the schema accepts it so the usual CLI habit works.
    out = helm.run(
        *helm.template_args(
            None,
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "prometheusRule.guestFailureRatio.threshold=0.1",
            "--set",
            "prometheusRule.latency.sloSeconds=0.25",
        )
    ).stdout
    assert "> 0.1" in out and "> 0.25" in out
    assert "'anyOf' failed" in helm.template_error(None, "--set", "prometheusRule.guestFailureRatio.threshold=2")
