"""The operator's ClusterRole is least-privilege, explicit, and exactly what the operator needs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from chart_support import RELEASE, Helm, agent_rules, find

from tars_operator.rbac import OPERATOR_RULES

Triple = tuple[str, str, str]


def _field(rule: Any, camel: str, snake: str) -> list[str]:
    if isinstance(rule, Mapping):
        value = rule.get(camel, rule.get(snake, []))
    else:
        value = getattr(rule, snake, None) or getattr(rule, camel, None) or []
    return list(value)


def triples(rules: Iterable[Any]) -> set[Triple]:
    """(group, resource, verb) for every permission the rules grant, whatever shape they come in."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in _field(rule, "apiGroups", "api_groups")
        for resource in _field(rule, "resources", "resources")
        for verb in _field(rule, "verbs", "verbs")
    }


def operator_rules() -> tuple[list[Any], str]:
    return list(OPERATOR_RULES), "tars_operator.rbac.OPERATOR_RULES"


def _cluster_role(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return find(manifests, "ClusterRole", f"{RELEASE}-tars-operator")


def test_no_wildcards_and_every_rule_explicit(default_manifests: list[dict[str, Any]]) -> None:
    for rule in _cluster_role(default_manifests)["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, f"unexpected keys in {rule}"
        for key in ("apiGroups", "resources", "verbs"):
            assert rule[key], f"empty {key} in {rule}"
            assert "*" not in rule[key] and not any("*" in item for item in rule[key]), rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


def test_cluster_role_equals_what_the_operator_needs(default_manifests: list[dict[str, Any]]) -> None:
    wanted, source = operator_rules()
    rendered = triples(_cluster_role(default_manifests)["rules"])
    missing = sorted(triples(wanted) - rendered)
    extra = sorted(rendered - triples(wanted))
    assert not missing, f"the chart's ClusterRole lacks permissions listed in {source}: {missing}"
    assert not extra, f"the chart's ClusterRole grants more than {source}: {extra}"


def test_operator_holds_every_permission_it_grants_to_agents(default_manifests: list[dict[str, Any]]) -> None:
    rendered = triples(_cluster_role(default_manifests)["rules"])
    granted = triples(agent_rules())
    assert granted <= rendered, f"the agents' Role grants what the operator lacks: {sorted(granted - rendered)}"


def test_no_access_to_secrets_or_pods_exec(default_manifests: list[dict[str, Any]]) -> None:
    resources = {resource for _, resource, _ in triples(_cluster_role(default_manifests)["rules"])}
    assert (
        # clusterrolebindings are allowed: the operator binds system:auth-delegator to agents, and the
        # API server refuses any binding to permissions the operator does not hold itself.
        not {"secrets", "pods/exec", "pods/attach", "serviceaccounts/token", "clusterroles"} & resources
    )


def test_binding_ties_the_role_to_the_operator_service_account(default_manifests: list[dict[str, Any]]) -> None:
    binding = find(default_manifests, "ClusterRoleBinding", f"{RELEASE}-tars-operator")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": f"{RELEASE}-tars-operator",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-tars-operator", "namespace": "tars-system"}
    ]


def test_gateway_role_is_read_only(full_manifests: list[dict[str, Any]]) -> None:
    role = find(full_manifests, "ClusterRole", f"{RELEASE}-tars-operator-gateway")
    assert {verb for _, _, verb in triples(role["rules"])} == {"get", "list", "watch"}


def test_rbac_can_be_left_to_a_cluster_admin(helm: Helm) -> None:
    kinds = {m["kind"] for m in helm.template({"rbac": {"create": False}})}
    assert not {"ClusterRole", "ClusterRoleBinding"} & kinds
