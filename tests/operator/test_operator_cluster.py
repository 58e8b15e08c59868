"""The operator against the real local control plane: children, drift, status, placement, routing."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tars_api.lease import AgentReport, ModelState, lease_body
from tarsctl import localcluster
from tests.fixtures import ControlPlane, OperatorProcess, eventually

pytestmark = pytest.mark.usefixtures("operator")


def apply(cp: ControlPlane, namespace: str, obj: dict[str, Any]) -> None:
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def tarsnode(name: str = "tars", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "tars.hyperlight.dev/v1alpha1", "kind": "TarsNode", "metadata": {"name": name}, "spec": spec}


def tarsmodel(name: str, node: str = "tars", **spec: Any) -> dict[str, Any]:
    base = {"nodeRef": {"name": node}, "kind": "sentiment", "source": "builtin://sentiment-vader", "memoryMiB": 100}
    return {
        "apiVersion": "tars.hyperlight.dev/v1alpha1",
        "kind": "TarsModel",
        "metadata": {"name": name},
        "spec": {**base, **spec},
    }


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {})


_LISTENING: dict[int, socket.socket | None] = {}
_LISTENING_LOCK = threading.Lock()


def listen_as_agent(port: int) -> None:
    """Opens a simulated agent's port, as a live agent's is: the operator asks the address of an agent
    whose Lease missed a renewal, and a refused connection makes it lost at once (liveness.py)."""
    with _LISTENING_LOCK:
        if port in _LISTENING:
            return
        try:
            server: socket.socket | None = socket.create_server((localcluster.host_ip(), port))
        except OSError:  # taken: something listens there already
            server = None
        _LISTENING[port] = server
    if server is not None:
        threading.Thread(target=_accept_and_close, args=(server,), daemon=True).start()


def _accept_and_close(server: socket.socket) -> None:
    while True:
        connection, _ = server.accept()
        connection.close()


def lease_for(
    namespace: str,
    node: str,
    port: int,
    models: dict[str, bool],
    *,
    ready: bool = True,
    capacity: int = 1000,
    renewed: datetime | None = None,
    requests: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    listen_as_agent(port)
    report = AgentReport(
        address=f"{localcluster.host_ip()}:{port}",
        backend="wasmtime",
        capacity_mib=capacity,
        ready=ready,
        models={key: ModelState(loaded=loaded) for key, loaded in models.items()},
        requests=requests or [],
    )
    return lease_body(node, namespace, f"agent-{node}", report, renewed or datetime.now(UTC), tarsnode="tars")


def put_lease(cp: ControlPlane, namespace: str, lease: dict[str, Any]) -> None:
    cp.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=test-agent",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(lease),
    )


def test_tarsnode_creates_its_children(
    control_plane: ControlPlane, namespace: str, simulated_nodes: tuple[str, ...]
) -> None:
    apply(control_plane, namespace, tarsnode(nodeSelector={"kubernetes.io/os": "linux"}))
    ds = eventually(lambda: control_plane.get_json("daemonset", "tars-agent", "-n", namespace), what="DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "tars.hyperlight.dev/kvm": "true"}
    assert pod["serviceAccountName"] == "tars-agent"
    for kind in ("serviceaccount", "role", "rolebinding", "configmap", "service", "poddisruptionbudget"):
        control_plane.get_json(kind, "tars-agent", "-n", namespace)
    binding = control_plane.get_json("clusterrolebinding", f"tars-agent-auth.{namespace}.tars")
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    status = eventually(
        lambda: (
            (tn := control_plane.get_json("tarsnode", "tars", "-n", namespace))
            .get("status", {})
            .get("desiredAgents", 0)
            >= len(simulated_nodes)
            and tn["status"]
        ),
        what="desiredAgents from the DaemonSet",
    )
    assert status["observedGeneration"] == 1
    ready = condition({"status": status}, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "NoAgentsReady"


def test_spec_change_updates_the_daemonset(control_plane: ControlPlane, namespace: str) -> None:
    apply(control_plane, namespace, tarsnode())
    eventually(lambda: control_plane.get_json("daemonset", "tars-agent", "-n", namespace))
    apply(control_plane, namespace, tarsnode(agent={"port": 9100}))
    eventually(
        lambda: (
            control_plane.get_json("daemonset", "tars-agent", "-n", namespace)["spec"]["template"]["spec"][
                "containers"
            ][0]["ports"][0]["containerPort"]
            == 9100
        ),
        what="new port in the DaemonSet",
    )


def test_drift_is_repaired(control_plane: ControlPlane, namespace: str) -> None:
    apply(control_plane, namespace, tarsnode())
    first = eventually(lambda: control_plane.get_json("daemonset", "tars-agent", "-n", namespace))
    control_plane.kubectl("delete", "daemonset", "tars-agent", "-n", namespace)
    eventually(
        lambda: (
            control_plane.get_json("daemonset", "tars-agent", "-n", namespace)["metadata"]["uid"]
            != first["metadata"]["uid"]
        ),
        timeout=10,
        what="DaemonSet restored",
    )
    control_plane.kubectl(
        "patch",
        "configmap",
        "tars-agent",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"data": {"agent.yaml": "tampered: true"}}),
    )
    eventually(
        lambda: (
            "tarsNode: tars" in control_plane.get_json("configmap", "tars-agent", "-n", namespace)["data"]["agent.yaml"]
        ),
        timeout=10,
        what="ConfigMap restored",
    )


def test_deleting_the_tarsnode_removes_its_children(control_plane: ControlPlane, namespace: str) -> None:
    apply(control_plane, namespace, tarsnode())
    eventually(lambda: control_plane.get_json("daemonset", "tars-agent", "-n", namespace))
    control_plane.kubectl("delete", "tarsnode", "tars", "-n", namespace)

    def gone() -> bool:
        left = control_plane.kubectl(
            "get",
            "daemonset,configmap,role,serviceaccount,service,pdb",
            "-n",
            namespace,
            "-l",
            "tars.hyperlight.dev/tarsnode=tars",
            "-o",
            "name",
        ).stdout
        return left.strip() == ""

    eventually(gone, timeout=30, what="children garbage-collected")
    binding = f"tars-agent-auth.{namespace}.tars"
    eventually(
        lambda: control_plane.kubectl("get", "clusterrolebinding", binding, check=False).returncode != 0,
        timeout=30,
        what="the cluster-scoped auth binding removed",
    )


def test_model_with_missing_node_is_degraded(control_plane: ControlPlane, namespace: str) -> None:
    apply(control_plane, namespace, tarsmodel("orphan", node="nowhere"))
    degraded = eventually(
        lambda: condition(control_plane.get_json("tarsmodel", "orphan", "-n", namespace), "Degraded"),
        what="Degraded condition",
    )
    assert degraded["status"] == "True" and degraded["reason"] == "NodeNotFound"
    assert "'nowhere' not found" in degraded["message"]


def _model(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return cp.get_json("tarsmodel", name, "-n", namespace)


def test_models_are_placed_routed_and_scaled(
    control_plane: ControlPlane, namespace: str, simulated_nodes: tuple[str, ...]
) -> None:
    apply(control_plane, namespace, tarsnode())
    key = f"{namespace}/m"
    for port, node in enumerate(simulated_nodes, start=9001):
        put_lease(control_plane, namespace, lease_for(namespace, node, port, {key: True}))
    apply(control_plane, namespace, tarsmodel("m", replicas=2))
    status = eventually(
        lambda: (s := _model(control_plane, namespace, "m").get("status", {})).get("readyReplicas") == 2 and s,
        what="two ready replicas",
    )
    placed = {p["node"] for p in status["placements"]}
    assert len(placed) == 2 and placed <= set(simulated_nodes)
    assert condition({"status": status}, "Ready")["status"] == "True"
    assert status["selector"] == "tars.hyperlight.dev/model=m"
    control_plane.get_json("service", "tars-model-m", "-n", namespace)
    slices = control_plane.get_json("endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=tars-model-m")
    endpoints = [e for s in slices["items"] for e in s["endpoints"]]
    assert sorted(e["nodeName"] for e in endpoints) == sorted(placed)
    assert all(e["conditions"]["ready"] for e in endpoints)

    eventually(
        lambda: all(
            control_plane.get_json("node", node)["metadata"]["labels"].get("tars.hyperlight.dev/backend") == "wasmtime"
            for node in simulated_nodes
        ),
        what="nodes labelled with their agent's backend",
    )

    # Renewed: under load the steps above can outlast a Lease, and an expired agent takes no replica.
    for port, node in enumerate(simulated_nodes, start=9001):
        put_lease(control_plane, namespace, lease_for(namespace, node, port, {key: True}))
    control_plane.kubectl("scale", "tarsmodel/m", "--replicas=3", "-n", namespace)
    status = eventually(
        lambda: (s := _model(control_plane, namespace, "m")["status"])["replicas"] == 3 and s, what="three replicas"
    )
    assert {p["node"] for p in status["placements"]} == set(simulated_nodes)


def _placed_once(cp: ControlPlane, namespace: str, nodes: tuple[str, ...], first_port: int) -> str:
    """Model "m" (one replica) placed among agents on ``nodes`` that hold it; the node it went to."""
    apply(cp, namespace, tarsnode())
    for port, node in enumerate(nodes, start=first_port):
        put_lease(cp, namespace, lease_for(namespace, node, port, {f"{namespace}/m": True}))
    apply(cp, namespace, tarsmodel("m", replicas=1))
    status = eventually(lambda: (s := _model(cp, namespace, "m").get("status", {})).get("placements") and s)
    node: str = status["placements"][0]["node"]
    return node


def _degraded_by(cp: ControlPlane, namespace: str, node: str) -> dict[str, Any]:
    """The TarsNode's Degraded condition once it names ``node`` (its status is its own reconcile,
    which may land just after the model's)."""
    found: dict[str, Any] = eventually(
        lambda: (
            (d := condition(cp.get_json("tarsnode", "tars", "-n", namespace), "Degraded")).get("status") == "True"
            and node in d["message"]
            and d
        ),
        what="the TarsNode reporting the lost agent",
    )
    return found


def test_lost_agent_moves_placements(
    control_plane: ControlPlane, namespace: str, simulated_nodes: tuple[str, ...]
) -> None:
    key = f"{namespace}/m"
    victim = _placed_once(control_plane, namespace, simulated_nodes, 9101)
    port = 9101 + simulated_nodes.index(victim)
    stale = datetime.now(UTC) - timedelta(minutes=5)
    put_lease(control_plane, namespace, lease_for(namespace, victim, port, {key: True}, renewed=stale))
    moved = eventually(
        lambda: (s := _model(control_plane, namespace, "m")["status"])["placements"][0]["node"] != victim and s,
        timeout=10,
        what="placement moved off the lost agent",
    )
    assert moved["readyReplicas"] == 1
    _degraded_by(control_plane, namespace, victim)


def test_agent_that_refuses_connections_is_lost_before_its_lease_expires(
    control_plane: ControlPlane, namespace: str, simulated_nodes: tuple[str, ...]
) -> None:
    key = f"{namespace}/m"
    victim = _placed_once(control_plane, namespace, simulated_nodes, 9301)
    # The victim's process died: its last renewal 12 s ago, nothing listens at its address. Its Lease
    # declares 40 s (renewed every 10 s), so it is late now and expires only 28 s from now.
    with socket.socket() as closed:
        closed.bind((localcluster.host_ip(), 0))
        dead_port = closed.getsockname()[1]
    stale = lease_for(namespace, victim, 9301, {key: True}, renewed=datetime.now(UTC) - timedelta(seconds=12))
    stale["metadata"]["annotations"]["tars.hyperlight.dev/address"] = f"{localcluster.host_ip()}:{dead_port}"
    stale["spec"]["leaseDurationSeconds"] = 40
    put_lease(control_plane, namespace, stale)
    eventually(
        lambda: _model(control_plane, namespace, "m")["status"]["placements"][0]["node"] != victim,
        timeout=20,
        what="placement moved off the agent that refuses connections, before its Lease expired",
    )
    degraded = _degraded_by(control_plane, namespace, victim)
    assert "refuses connections" in degraded["message"]


def test_unplaceable_replicas_are_reported(
    control_plane: ControlPlane, namespace: str, simulated_nodes: tuple[str, ...]
) -> None:
    apply(control_plane, namespace, tarsnode())
    for port, node in enumerate(simulated_nodes, start=9201):
        put_lease(control_plane, namespace, lease_for(namespace, node, port, {}, capacity=150))
    apply(control_plane, namespace, tarsmodel("big", replicas=1, memoryMiB=4000))
    degraded = eventually(
        lambda: (c := condition(_model(control_plane, namespace, "big"), "Degraded")).get("status") == "True" and c
    )
    assert degraded["reason"] == "Unplaceable"
    assert _model(control_plane, namespace, "big")["status"]["unplacedReplicas"] == 1


def test_operator_exports_metrics(operator: OperatorProcess) -> None:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    assert "tars_operator_reconciliations_total" in text
    assert "tars_operator_reconcile_duration_seconds_bucket" in text


def test_autoscaler_follows_reported_load_and_goes_to_zero(
    control_plane: ControlPlane, namespace: str, simulated_nodes: tuple[str, ...]
) -> None:
    apply(control_plane, namespace, tarsnode())
    key = f"{namespace}/auto"
    scaling = {
        "enabled": True,
        "minReplicas": 0,
        "maxReplicas": 6,
        "target": 10,
        "scaleToZero": True,
        "scaleToZeroGracePeriod": "4s",
        "stableWindow": "8s",
        "panicWindow": "2s",
    }
    apply(control_plane, namespace, tarsmodel("auto", replicas=1, scaling=scaling))

    def report(in_flight: float) -> None:
        for port, node in enumerate(simulated_nodes, start=9301):
            lease = lease_for(namespace, node, port, {key: True})
            models = json.loads(lease["metadata"]["annotations"]["tars.hyperlight.dev/models"])
            models[key]["inFlight"] = in_flight / len(simulated_nodes)
            lease["metadata"]["annotations"]["tars.hyperlight.dev/models"] = json.dumps(models)
            put_lease(control_plane, namespace, lease)

    report(45.0)
    scaled = eventually(
        lambda: (m := _model(control_plane, namespace, "auto"))["spec"]["replicas"] == 5 and m,
        timeout=20,
        what="scale up to ceil(45 / 10)",
    )
    assert scaled["status"]["autoscaler"]["mode"] in ("panic", "stable")
    assert scaled["status"]["autoscaler"]["desiredReplicas"] == 5
    events = control_plane.kubectl("get", "events", "-n", namespace, "--field-selector", "reason=Scaled").stdout
    assert "1 -> 5 replicas" in events or "-> 5 replicas" in events

    report(0.0)
    idle = eventually(
        lambda: (m := _model(control_plane, namespace, "auto"))["spec"]["replicas"] == 0 and m,
        timeout=40,
        what="scale to zero after the grace period",
    )
    assert idle["status"]["autoscaler"]["mode"] == "idle"
    assert eventually(lambda: _model(control_plane, namespace, "auto")["status"]["placements"] == [])


def test_guest_requests_reach_the_operator(
    control_plane: ControlPlane, namespace: str, simulated_nodes: tuple[str, ...]
) -> None:
    """self-healing asks for replicas through operator.request; the agent relays it in its Lease."""
    apply(control_plane, namespace, tarsnode())
    apply(control_plane, namespace, tarsmodel("target", replicas=1))
    apply(control_plane, namespace, tarsmodel("autoscaled", replicas=1, scaling={"enabled": True}))
    now = time.time()
    asks = [
        {
            "id": 1,
            "at": now,
            "action": "scale",
            "namespace": namespace,
            "from": f"{namespace}/self-healing",
            "model": "target",
            "replicas": 2,
            "reason": "p99 over SLO",
        },
        {
            "id": 2,
            "at": now,
            "action": "scale",
            "namespace": namespace,
            "from": f"{namespace}/self-healing",
            "model": "autoscaled",
            "replicas": 4,
            "reason": "burst",
        },
    ]
    put_lease(control_plane, namespace, lease_for(namespace, simulated_nodes[0], 9501, {}, requests=asks))
    eventually(lambda: _model(control_plane, namespace, "target")["spec"]["replicas"] == 2, what="scaled on request")

    def events(reason: str) -> str:
        return control_plane.kubectl("get", "events", "-n", namespace, "--field-selector", f"reason={reason}").stdout

    assert "as requested by" in eventually(lambda: events("RequestAccepted"), what="accepted Event")
    assert "autoscaler owns" in eventually(lambda: events("RequestRefused"), what="refused Event")
    assert _model(control_plane, namespace, "autoscaled")["spec"]["replicas"] == 1


def test_orphaned_auth_bindings_are_swept(control_plane: ControlPlane, namespace: str) -> None:
    """A TarsNode deleted while no operator ran leaves its cluster-scoped binding; the sweep finds it."""
    apply(control_plane, namespace, tarsnode("kept"))
    eventually(lambda: control_plane.get_json("clusterrolebinding", f"tars-agent-auth.{namespace}.kept"))
    orphan = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": f"tars-agent-auth.{namespace}.gone",
            "labels": {
                "app.kubernetes.io/managed-by": "tars-operator",
                "tars.hyperlight.dev/tarsnode": "gone",
                "tars.hyperlight.dev/namespace": namespace,
            },
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
        "subjects": [{"kind": "ServiceAccount", "name": "gone-agent", "namespace": namespace}],
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(orphan))
    eventually(
        lambda: (
            control_plane.kubectl("get", "clusterrolebinding", orphan["metadata"]["name"], check=False).returncode != 0
        ),
        timeout=30,
        what="the orphaned binding swept",
    )
    control_plane.get_json("clusterrolebinding", f"tars-agent-auth.{namespace}.kept")


def _deny_service(control_plane: ControlPlane, namespace: str, service: str) -> None:
    """A ValidatingAdmissionPolicy refusing one Service in the namespace: a failure the CRD cannot see."""
    name = f"deny-{namespace}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["services"],
                    }
                ]
            },
            "validations": [
                {"expression": f"object.metadata.name != '{service}'", "message": f"{service} is not allowed here"}
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
        },
    }
    for obj in (policy, binding):
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(obj))
    # Policies take effect once the API server has loaded them: wait until a probe Service is refused.
    probe = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": service}, "spec": {"ports": [{"port": 80}]}}
    eventually(
        lambda: (
            control_plane.kubectl(
                "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(probe), check=False
            ).returncode
            != 0
        ),
        what="the admission policy in force",
    )


def test_a_failing_model_shows_its_error_and_blocks_no_other(
    control_plane: ControlPlane, namespace: str, simulated_nodes: tuple[str, ...]
) -> None:
    """One model whose Service the API server refuses gets that error in its status and an Event;
    the models beside it on the same TarsNode are still placed and become ready."""
    _deny_service(control_plane, namespace, "tars-model-refused")
    try:
        apply(control_plane, namespace, tarsnode())
        names = ("first", "refused", "last")
        loaded = {f"{namespace}/{name}": True for name in names}
        for port, node in enumerate(simulated_nodes, start=9101):
            put_lease(control_plane, namespace, lease_for(namespace, node, port, loaded))
        for name in names:
            apply(control_plane, namespace, tarsmodel(name))
        for name in ("first", "last"):
            eventually(
                lambda name=name: condition(_model(control_plane, namespace, name), "Ready").get("status") == "True",
                what=f"{name} ready",
            )
        degraded = eventually(
            lambda: (
                (c := condition(_model(control_plane, namespace, "refused"), "Degraded")).get("status") == "True" and c
            ),
            what="the refused model degraded",
        )
        assert degraded["reason"] == "ApplyFailed"
        assert "tars-model-refused is not allowed here" in degraded["message"]
        assert condition(_model(control_plane, namespace, "refused"), "Ready")["status"] == "False"
        events = eventually(
            lambda: control_plane.kubectl(
                "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=refused,reason=ApplyFailed"
            ).stdout.strip(),
            what="an ApplyFailed Event on the refused model",
        )
        assert "Warning" in events
    finally:
        for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            control_plane.kubectl("delete", kind, f"deny-{namespace}")


def test_a_namespace_being_deleted_is_left_to_the_namespace_controller(
    control_plane: ControlPlane, simulated_nodes: tuple[str, ...], operator: OperatorProcess
) -> None:
    """Deleting a namespace removes its agents' Leases, which woke every model's reconcile there: each
    re-created the Service and slices already removed, and the API server refused them all."""
    namespace = f"t-gone-{int(time.time() * 1000) % 10**8}"
    control_plane.kubectl("create", "namespace", namespace)
    apply(control_plane, namespace, tarsnode())
    names = [f"m{i}" for i in range(6)]
    for port, node in enumerate(simulated_nodes, start=9301):
        put_lease(control_plane, namespace, lease_for(namespace, node, port, {f"{namespace}/{n}": True for n in names}))
    for name in names:
        apply(control_plane, namespace, tarsmodel(name))
    for name in names:
        eventually(lambda name=name: _model(control_plane, namespace, name).get("status", {}).get("placements"))
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
    eventually(
        lambda: control_plane.kubectl("get", "namespace", namespace, check=False).returncode != 0,
        timeout=90,
        what="the namespace gone",
    )
    refused = [line for line in operator.log_text().splitlines() if f"namespace {namespace} because" in line]
    assert refused == []
