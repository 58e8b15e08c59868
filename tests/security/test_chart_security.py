"""The chart's NetworkPolicy, cert-manager TLS and gateway access-control wiring, rendered by helm."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.chart_support import Helm, find, find_helm

FULL = "tars-tars-operator"


@pytest.fixture(scope="module")
def helm() -> Helm:
    found = find_helm()
    assert found is not None, "helm is not built: run hack/build-control-plane.sh"
    return found


def test_off_by_default(helm: Helm) -> None:
    kinds = {m["kind"] for m in helm.template({"gateway": {"enabled": True}})}
    assert not kinds & {"NetworkPolicy", "Certificate", "Issuer"}


def test_network_policy_admits_only_gateway_operator_and_prometheus(helm: Helm) -> None:
    values: dict[str, Any] = {
        "networkPolicy": {
            "enabled": True,
            "namespaces": ["team-a", "team-b"],
            "prometheus": {"namespaceSelector": {"name": "obs"}, "podSelector": {"app": "prom"}},
        }
    }
    policies = [m for m in helm.template(values) if m["kind"] == "NetworkPolicy"]
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]
    spec = policies[0]["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "tars-agent"}}
    assert spec["policyTypes"] == ["Ingress"]
    peers = spec["ingress"][0]["from"]
    components = [p["podSelector"]["matchLabels"].get("app.kubernetes.io/component") for p in peers]
    assert components == ["gateway", "operator", None]
    assert peers[2]["namespaceSelector"] == {"matchLabels": {"name": "obs"}}
    assert peers[2]["podSelector"] == {"matchLabels": {"app": "prom"}}
    default = [m for m in helm.template({"networkPolicy": {"enabled": True}}) if m["kind"] == "NetworkPolicy"]
    assert default[0]["metadata"]["namespace"] == "tars-system"
    assert default[0]["spec"]["ingress"][0]["from"][2] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    for peer in peers[:2]:
        assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "tars-system"}


def test_tls_self_signed_ca_and_gateway_wiring(helm: Helm) -> None:
    manifests = helm.template({"gateway": {"enabled": True, "auth": {"enabled": True}}, "tls": {"enabled": True}})
    issuers = {m["metadata"]["name"]: m["spec"] for m in manifests if m["kind"] == "Issuer"}
    assert issuers == {f"{FULL}-selfsigned": {"selfSigned": {}}, f"{FULL}-ca": {"ca": {"secretName": f"{FULL}-ca"}}}
    ca = find(manifests, "Certificate", f"{FULL}-ca")["spec"]
    assert ca["isCA"] is True and ca["issuerRef"]["name"] == f"{FULL}-selfsigned"
    serving = find(manifests, "Certificate", f"{FULL}-data-plane")["spec"]
    assert serving["secretName"] == "tars-data-plane-tls" and serving["issuerRef"]["name"] == f"{FULL}-ca"
    assert f"{FULL}-gateway.tars-system.svc" in serving["dnsNames"]

    pod = find(manifests, "Deployment", f"{FULL}-gateway")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == [
        "--namespace=tars-system",
        "--auth=on",
        "--default-access=namespace",
        "--tls-cert=/etc/tars/tls/tls.crt",
        "--tls-key=/etc/tars/tls/tls.key",
        "--upstream-ca=/etc/tars/tls/ca.crt",
    ]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert {"name": "tls", "secret": {"secretName": "tars-data-plane-tls"}} in pod["volumes"]
    rules = find(manifests, "ClusterRole", f"{FULL}-gateway")["rules"]
    assert {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]} in rules
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]} in rules

    from tars_gateway.server import parse_args

    parsed = parse_args(container["args"])
    assert parsed.auth == "on" and parsed.upstream_ca == "/etc/tars/tls/ca.crt"


def test_tls_with_an_existing_issuer(helm: Helm) -> None:
    values = {"tls": {"enabled": True, "selfSigned": False, "issuerRef": {"name": "corp", "kind": "ClusterIssuer"}}}
    manifests = helm.template(values)
    assert not [m for m in manifests if m["kind"] == "Issuer"]
    assert find(manifests, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    error = helm.template_error({"tls": {"enabled": True, "selfSigned": False}})
    assert "tls.issuerRef.name is required" in error
