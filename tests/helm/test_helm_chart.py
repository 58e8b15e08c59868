"""The chart renders what a platform engineer expects, with default and non-default values."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
import yaml
from chart_support import CHART, FULL_VALUES, NAMESPACE, RELEASE, REPO, Helm, find, kinds, values_file

from tars_api import TarsModel, TarsNode

FULLNAME = f"{RELEASE}-tars-operator"


def test_chart_version_and_app_version_match_the_python_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == project["version"]


def test_helm_lint(helm: Helm) -> None:
    result = helm.run("lint", str(CHART), "--strict", "--kube-version", helm.kube_version)
    assert "0 chart(s) failed" in result.stdout


def test_helm_lint_with_everything_enabled(helm: Helm) -> None:
    result = helm.run(
        "lint",
        str(CHART),
        "--strict",
        "--kube-version",
        helm.kube_version,
        "--namespace",
        NAMESPACE,
        "--values",
        values_file(FULL_VALUES),
    )
    assert "0 chart(s) failed" in result.stdout


def test_default_render_has_the_operator_and_nothing_optional(default_manifests: list[dict[str, Any]]) -> None:
    assert kinds(default_manifests) == {
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "PodDisruptionBudget",
        "ClusterKopfPeering",
    }
    for manifest in default_manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/part-of"] == "tars"
        if manifest["kind"] not in {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}:
            assert manifest["metadata"]["namespace"] == NAMESPACE


def test_operator_deployment_defaults(default_manifests: list[dict[str, Any]]) -> None:
    deployment = find(default_manifests, "Deployment", FULLNAME)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = deployment["spec"]["template"]["spec"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == FULLNAME

    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/tars-hyperlight/tars:0.1.0"
    assert container["command"] == ["tars-operator"]
    assert container["args"] == [
        "--all-namespaces",
        "--metrics-port=9090",
        "--health-port=8081",
        "--log-level=info",
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TARS_OPERATOR_PEERING_NAME"] == "tars"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8081, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert container["resources"]["limits"] == {"memory": "512Mi"}

    spread = pod["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    assert all(c["labelSelector"] == {"matchLabels": selector} for c in spread)


def test_operator_pod_meets_the_restricted_pod_security_standard(default_manifests: list[dict[str, Any]]) -> None:
    pod = find(default_manifests, "Deployment", FULLNAME)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # A read-only root needs a writable scratch directory for Python.
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert all(v.get("emptyDir") is not None for v in pod["volumes"])


def test_peering_object_and_pdb_follow_replicas(helm: Helm, default_manifests: list[dict[str, Any]]) -> None:
    assert find(default_manifests, "ClusterKopfPeering", "tars")
    pdb = find(default_manifests, "PodDisruptionBudget", FULLNAME)
    assert pdb["spec"]["minAvailable"] == 1
    single = helm.template({"operator": {"replicas": 1, "peering": {"enabled": False}}})
    assert "PodDisruptionBudget" not in kinds(single)
    assert "ClusterKopfPeering" not in kinds(single)
    args = find(single, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--standalone" in args
    env = {e["name"] for e in find(single, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "TARS_OPERATOR_PEERING_NAME" not in env


def _parse_operator_args() -> Any:
    from tars_operator.main import parse_args

    return parse_args


@pytest.mark.parametrize("which", ["default", "full", "standalone"])
def test_rendered_args_are_accepted_by_tars_operator(helm: Helm, which: str) -> None:
    """The chart and the operator's command line agree (argparse exits on an unknown flag)."""
    parse_args = _parse_operator_args()
    values = {
        "default": None,
        "full": FULL_VALUES,
        "standalone": {"operator": {"replicas": 1, "peering": {"enabled": False}}},
    }[which]
    container = find(helm.template(values), "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0]
    try:
        args = parse_args(container["args"])
    except SystemExit:
        pytest.fail(f"tars-operator rejects the chart's arguments {container['args']}")
    assert args.metrics_port == 9090 and args.health_port == 8081
    if which == "full":
        assert args.namespace == ["team-a", "team-b"]
        assert args.log_level == "debug"
    assert args.standalone is (which == "standalone")


def test_metrics_service_selects_the_operator(default_manifests: list[dict[str, Any]]) -> None:
    service = find(default_manifests, "Service", f"{FULLNAME}-metrics")
    pod_labels = find(default_manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]


def test_everything_enabled(full_manifests: list[dict[str, Any]]) -> None:
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap", "TarsNode", "TarsModel", "KopfPeering"} <= kinds(
        full_manifests
    )
    deployment = find(full_manifests, "Deployment", FULLNAME)
    assert deployment["spec"]["replicas"] == 3
    assert deployment["metadata"]["labels"]["team"] == "ml-platform"
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/tars-hyperlight/tars@" + FULL_VALUES["image"]["digest"]
    assert container["args"] == [
        "--namespace=team-a",
        "--namespace=team-b",
        "--metrics-port=9090",
        "--health-port=8081",
        "--log-level=debug",
        "--log-level=debug",
    ]
    assert {"name": "EXTRA", "value": "1"} in container["env"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["tolerations"][0]["key"] == "dedicated"
    # Namespaced operators use one KopfPeering per served namespace instead of the cluster one.
    peerings = [m for m in full_manifests if m["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert "ClusterKopfPeering" not in kinds(full_manifests)


def test_service_monitors(full_manifests: list[dict[str, Any]]) -> None:
    operator = find(full_manifests, "ServiceMonitor", FULLNAME)
    assert operator["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert operator["spec"]["endpoints"][0]["port"] == "metrics"
    agents = find(full_manifests, "ServiceMonitor", f"{FULLNAME}-agents")
    assert agents["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "tars-agent"
    assert agents["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    assert agents["spec"]["endpoints"][0]["path"] == "/metrics"


def _rules(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (group,) = find(manifests, "PrometheusRule")["spec"]["groups"]
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def test_prometheus_rule_alerts(full_manifests: list[dict[str, Any]]) -> None:
    rules = _rules(full_manifests)
    alerts = [r["alert"] for r in rules if "alert" in r]
    assert set(alerts) == {
        "TarsOperatorDown",
        "TarsAgentMissing",
        "TarsGuestFailureRatioHigh",
        "TarsModelLatencyHigh",
        "TarsPlacementFailing",
        "TarsReconcileErrors",
    }
    for rule in rules:
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert re.fullmatch(r"\d+[smh]", rule["for"])
    by_alert = {r["alert"]: r["expr"] for r in rules if "alert" in r}
    assert "tars_operator_agents" in by_alert["TarsAgentMissing"]
    assert "> 0.1" in by_alert["TarsGuestFailureRatioHigh"]
    assert "tars_operator_placement_failures_total" in by_alert["TarsPlacementFailing"]
    assert f'job="{FULLNAME}-metrics"' in by_alert["TarsOperatorDown"]
    latency = [r["expr"] for r in rules if r.get("alert") == "TarsModelLatencyHigh"]
    # The default objective skips models that have their own, and each of those gets its own rule.
    assert len(latency) == 3
    assert 'model!~"sentiment|tars-reasoning"' in latency[0] and latency[0].rstrip().endswith("> 2")
    assert any('model="sentiment"' in e and e.rstrip().endswith("> 0.05") for e in latency)
    assert rules[-1] == FULL_VALUES["prometheusRule"]["additionalRules"][0]


def test_alerts_can_be_switched_off_one_by_one(helm: Helm) -> None:
    manifests = helm.template(
        {"prometheusRule": {"enabled": True, "latency": {"enabled": False}, "operatorDown": {"enabled": False}}}
    )
    alerts = {r["alert"] for r in _rules(manifests)}
    assert "TarsModelLatencyHigh" not in alerts and "TarsOperatorDown" not in alerts
    assert "TarsAgentMissing" in alerts


def _parse_promql() -> Any:
    import promql_parser  # a dev dependency: PyPI promql-parser checks PromQL syntax

    return promql_parser.parse


def test_alert_expressions_are_valid_promql(full_manifests: list[dict[str, Any]]) -> None:
    parse = _parse_promql()
    for rule in _rules(full_manifests):
        parse(rule["expr"])


def _dashboard(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    configmap = find(manifests, "ConfigMap", f"{FULLNAME}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    dashboard: dict[str, Any] = json.loads(configmap["data"]["tars-overview.json"])
    return dashboard


def test_grafana_dashboard(full_manifests: list[dict[str, Any]]) -> None:
    dashboard = _dashboard(full_manifests)
    assert dashboard["uid"] == "tars-overview"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = {p["title"] for p in panels}
    for wanted in (
        "Sandbox starts per second",
        "Latency p50 / p99 by model",
        "Requests per second by model",
        "Warm pool size by model",
        "Guest failures by model and reason",
        "Backend per node",
    ):
        assert wanted in titles
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in (
        "tars_agent_requests_total",
        "tars_agent_request_duration_seconds_bucket",
        "tars_agent_guest_failures_total",
        "tars_agent_sandbox_start_seconds",
        "tars_agent_pool_size",
        "tars_agent_backend_info",
        "tars_operator_agents",
        "tars_operator_reconciliations_total",
        "tars_operator_placement_failures_total",
        "tars_operator_api_requests_total",
        "tars_operator_api_request_duration_seconds_bucket",
    ):
        assert metric in exprs, metric
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # Panels must not overlap on Grafana's 24-column grid.
    cells: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, p["title"]
        cells |= area


def test_dashboard_queries_are_valid_promql(full_manifests: list[dict[str, Any]]) -> None:
    parse = _parse_promql()
    for panel in _dashboard(full_manifests)["panels"]:
        for target in panel.get("targets", []):
            parse(target["expr"].replace("$__rate_interval", "5m").replace("$model", ".*"))


def test_samples_are_valid_custom_resources(full_manifests: list[dict[str, Any]]) -> None:
    nodes = [TarsNode.model_validate(m) for m in full_manifests if m["kind"] == "TarsNode"]
    models = [TarsModel.model_validate(m) for m in full_manifests if m["kind"] == "TarsModel"]
    assert [n.metadata.name for n in nodes] == ["tars-node"]
    assert nodes[0].spec.platform.type == "Wasmtime"
    assert {m.metadata.name for m in models} == {"sentiment", "sentence-bert", "tars-reasoning", "word-count"}
    assert all(m.spec.node_ref.name == "tars-node" for m in models)


def test_gateway(full_manifests: list[dict[str, Any]], default_manifests: list[dict[str, Any]]) -> None:
    assert not any(m["metadata"]["name"].endswith("-gateway") for m in default_manifests)
    deployment = find(full_manifests, "Deployment", f"{FULLNAME}-gateway")
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/tars-hyperlight/tars:0.1.0"
    assert container["command"] == ["tars-gateway"]
    assert container["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8001, "protocol": "TCP"},
    ]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["TARS_GATEWAY_PORT"] == "8000" and env["TARS_GATEWAY_GRPC_PORT"] == "8001"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = find(full_manifests, "Service", f"{FULLNAME}-gateway")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", 8000, "http"),
        ("grpc", 8001, "grpc"),
    ]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # The operator's selector must not pick up gateway pods, nor the other way round.
    operator = find(full_manifests, "Deployment", FULLNAME)
    assert not operator["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"operator": {"replicas": 2, "peering": {"enabled": False}}},
            "operator.replicas is 2 but operator.peering.enabled is false",
        ),
        ({"operator": {"metricsPort": 8081}}, "operator.healthPort and operator.metricsPort are both 8081"),
        (
            {"operator": {"podDisruptionBudget": {"minAvailable": 2}}},
            "operator.podDisruptionBudget.minAvailable (2) must be below operator.replicas (2)",
        ),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required when serviceAccount.create is false"),
        (
            {"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}},
            "serviceMonitor.enabled needs metrics.service.enabled",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_clear_message(helm: Helm, values: dict[str, Any], message: str) -> None:
    assert message in helm.template_error(values)


def test_existing_service_account(helm: Helm) -> None:
    manifests = helm.template({"serviceAccount": {"create": False, "name": "platform-operator"}})
    assert "ServiceAccount" not in kinds(manifests)
    assert find(manifests, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"
    assert find(manifests, "ClusterRoleBinding")["subjects"][0]["name"] == "platform-operator"


def test_names_fit_in_dns_labels(helm: Helm) -> None:
    manifests = helm.template({"fullnameOverride": "x" * 52, "gateway": {"enabled": True}})
    for manifest in manifests:
        assert len(manifest["metadata"]["name"]) <= 63, manifest["metadata"]["name"]


def test_every_metric_the_dashboard_reads_is_exported(full_manifests: list[dict[str, Any]]) -> None:
    """A renamed metric leaves a panel empty without an error anywhere: every series a panel reads is
    one the operator, the gateway or an agent really exports."""
    import prometheus_client

    import tars_gateway.server  # noqa: F401 - registers the gateway's metrics
    import tars_operator.metrics  # noqa: F401 - registers the operator's metrics
    from tars_agent.metrics import AgentMetrics

    # A family with labels has no samples until a child exists, so its series are named from its type.
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "info": ("_info",)}
    exported = {
        family.name + suffix
        for registry in (prometheus_client.REGISTRY, AgentMetrics().registry)
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }
    panels = [p for p in _dashboard(full_manifests)["panels"] if p["type"] != "row"]
    read = {name for p in panels for t in p["targets"] for name in re.findall(r"\btars_[a-z_]+\b", t["expr"])}
    assert read, "no metric found in the dashboard's queries"
    assert read <= exported, sorted(read - exported)
