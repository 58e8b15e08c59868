"""The objects a TarsNode and a TarsModel become, built without a cluster."""

from __future__ import annotations

from typing import Any

import yaml

from tars_api import TarsModel, TarsNode
from tars_operator import builders, routing
from tars_operator.placement import AgentView


def tarsnode(**spec: Any) -> TarsNode:
    return TarsNode.model_validate(
        {"metadata": {"name": "tars", "namespace": "ai", "uid": "uid-1", "generation": 3}, "spec": spec}
    )


def tarsmodel(**spec: Any) -> TarsModel:
    base = {"nodeRef": {"name": "tars"}, "kind": "sentiment", "source": "builtin://sentiment-vader"}
    return TarsModel.model_validate(
        {"metadata": {"name": "sentiment", "namespace": "ai", "uid": "uid-2"}, "spec": {**base, **spec}}
    )


def test_every_child_is_owned_and_labelled() -> None:
    children = builders.desired_children(tarsnode())
    assert [c["kind"] for c in children] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRoleBinding",
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
        "DaemonSet",
    ]
    binding = children.pop(3)  # cluster-scoped: no namespace, no owner; the operator deletes it
    assert "namespace" not in binding["metadata"] and "ownerReferences" not in binding["metadata"]
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tars-agent", "namespace": "ai"}]
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == "ai"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "tars.hyperlight.dev/v1alpha1",
                "kind": "TarsNode",
                "name": "tars",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "tars-operator"
        assert meta["labels"]["tars.hyperlight.dev/tarsnode"] == "tars"


def test_daemonset_runs_only_on_kvm_nodes_with_the_users_selector_and_tolerations() -> None:
    ds = builders.desired_daemonset(
        tarsnode(
            nodeSelector={"pool": "inference"},
            tolerations=[{"key": "dedicated", "operator": "Equal", "value": "tars", "effect": "NoSchedule"}],
            agent={"port": 9000, "grpcPort": 9001, "image": "registry.local/agent:2"},
        )
    )
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "inference", "tars.hyperlight.dev/kvm": "true"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "tars", "effect": "NoSchedule"}]
    container = pod["containers"][0]
    assert container["image"] == "registry.local/agent:2"
    assert container["ports"] == [
        {"name": "http", "containerPort": 9000, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 9001, "protocol": "TCP"},
    ]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert {e["name"] for e in container["env"]} >= {"NODE_NAME", "POD_IP"}
    kvm = next(v for v in pod["volumes"] if v["name"] == "kvm")
    assert kvm["hostPath"] == {"path": "/dev/kvm", "type": "CharDevice"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9000"
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()


def test_config_change_rolls_the_pods() -> None:
    before = builders.desired_daemonset(tarsnode())
    after = builders.desired_daemonset(tarsnode(sandbox={"memoryMiB": 512}))
    key = "tars.hyperlight.dev/config-hash"
    assert (
        before["spec"]["template"]["metadata"]["annotations"][key]
        != after["spec"]["template"]["metadata"]["annotations"][key]
    )


def test_agent_config_is_rendered_from_the_spec() -> None:
    cm = builders.desired_configmap(tarsnode(platform={"type": "Wasmtime"}, warmPoolSize=7))
    config = yaml.safe_load(cm["data"]["agent.yaml"])
    assert config["backend"] == "wasmtime"
    assert config["warmPoolSize"] == 7
    assert config["tarsNode"] == "tars"
    assert config["sandbox"]["memoryMiB"] == 256


def test_agent_role_is_least_privilege() -> None:
    rules = builders.desired_role(tarsnode())["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert ("", "secrets", "get") not in granted
    assert all(v != "*" and r != "*" for _, r, v in granted)
    assert ("coordination.k8s.io", "leases", "update") in granted
    assert ("tars.hyperlight.dev", "tarsmodels", "watch") in granted


def test_headless_service_and_pdb_select_the_agents() -> None:
    tn = tarsnode()
    selector = builders.desired_daemonset(tn)["spec"]["selector"]["matchLabels"]
    assert builders.desired_service(tn)["spec"]["clusterIP"] == "None"
    assert [(p["name"], p["port"]) for p in builders.desired_service(tn)["spec"]["ports"]] == [
        ("http", 8080),
        ("grpc", 8081),
    ]
    assert builders.agent_config(tn)["grpcPort"] == 8081
    assert builders.agent_config(tn)["nativeHttp"] is False  # the Python path unless the TarsNode asks
    assert builders.desired_service(tn)["spec"]["selector"] == selector
    assert builders.desired_pdb(tn)["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}


def test_endpointslices_list_placed_agents_ready_only_when_loaded() -> None:
    tm = tarsmodel()
    agents = [
        AgentView("n1", True, 1024, zone="z1", address="10.0.0.1:8080", loaded=frozenset({"ai/sentiment"})),
        AgentView("n2", True, 1024, address="10.0.0.2:8080"),
        AgentView("n3", True, 1024, address="10.0.0.3:8080", loaded=frozenset({"ai/sentiment"})),
    ]
    slices = routing.desired_endpointslices(tm, {"n1": 1, "n2": 1}, agents)
    assert len(slices) == 1
    endpoints = slices[0]["endpoints"]
    assert [(e["addresses"], e["conditions"]["ready"]) for e in endpoints] == [
        (["10.0.0.1"], True),
        (["10.0.0.2"], False),
    ]
    assert endpoints[0]["zone"] == "z1"
    assert slices[0]["metadata"]["labels"]["kubernetes.io/service-name"] == routing.service_name(tm)
    assert slices[0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]


def test_endpointslices_split_by_port() -> None:
    agents = [AgentView("n1", True, 1, address="10.0.0.1:9001"), AgentView("n2", True, 1, address="10.0.0.2:9002")]
    slices = routing.desired_endpointslices(tarsmodel(), {"n1": 1, "n2": 1}, agents)
    assert sorted(s["ports"][0]["port"] for s in slices) == [9001, 9002]


def test_addresses_an_endpointslice_cannot_carry_are_left_out() -> None:
    agents = [
        AgentView("n1", True, 1, address="127.0.0.1:9001"),
        AgentView("n2", True, 1, address="agent-2:9002"),
        AgentView("n3", True, 1, address="169.254.1.1:9003"),
        AgentView("n4", True, 1, address="10.1.1.4:9004"),
    ]
    slices = routing.desired_endpointslices(tarsmodel(), {"n1": 1, "n2": 1, "n3": 1, "n4": 1}, agents)
    assert [e["addresses"] for s in slices for e in s["endpoints"]] == [["10.1.1.4"]]


def test_model_service_has_no_selector() -> None:
    svc = routing.desired_model_service(tarsmodel())
    assert "selector" not in svc["spec"]
    assert svc["spec"]["ports"][0]["name"] == "http"


def test_tls_secret_is_mounted_and_probes_use_https() -> None:
    plain = builders.desired_daemonset(tarsnode())
    assert "scheme" not in plain["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    assert "tls" not in yaml.safe_load(builders.desired_configmap(tarsnode())["data"]["agent.yaml"])
    tn = tarsnode(agent={"tlsSecretName": "agents-tls", "defaultAccess": "namespace"})
    pod = builders.desired_daemonset(tn)["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "agents-tls"}} in pod["volumes"]
    container = pod["containers"][0]
    assert {"name": "tls", "mountPath": builders.TLS_DIR, "readOnly": True} in container["volumeMounts"]
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    config = yaml.safe_load(builders.desired_configmap(tn)["data"]["agent.yaml"])
    assert config["tls"] == {"certFile": f"{builders.TLS_DIR}/tls.crt", "keyFile": f"{builders.TLS_DIR}/tls.key"}
    assert config["auth"]["defaultAccess"] == "namespace"


def test_model_roots_reach_the_agent_config_and_default_to_none() -> None:
    def roots(tn: TarsNode) -> list[str]:
        return yaml.safe_load(builders.desired_configmap(tn)["data"]["agent.yaml"])["modelRoots"]

    assert roots(tarsnode()) == []
    assert roots(tarsnode(modelRoots=["/var/lib/tars/models"])) == ["/var/lib/tars/models"]
