"""Agent pods' container states become the TarsNode's PodsHealthy condition, with what to do next."""

from __future__ import annotations

from typing import Any

from tars_api import TarsNode
from tars_operator.podfaults import PodRecord, pod_record, pods_condition
from tars_operator.status import tarsnode_status


def pod(name: str, state: dict[str, Any], last: dict[str, Any] | None = None, restarts: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"nodeName": "node-a"},
        "status": {
            "containerStatuses": [{"name": "agent", "state": state, "lastState": last or {}, "restartCount": restarts}]
        },
    }


def test_image_pull_failure_names_the_image_fix() -> None:
    record = pod_record(
        pod("a-1", {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "x:nope"'}})
    )
    assert record == PodRecord("a-1", "node-a", "ImagePullBackOff", 'Back-off pulling image "x:nope"', 0)
    cond = pods_condition("ns", [record])
    assert (cond.type, cond.status, cond.reason) == ("PodsHealthy", False, "ImagePullBackOff")
    assert "x:nope" in cond.message and "spec.agent.image" in cond.message


def test_an_init_container_that_cannot_be_pulled_is_the_pods_fault() -> None:
    body = pod("a-1", {"waiting": {"reason": "PodInitializing"}})
    body["status"]["initContainerStatuses"] = [
        {"name": "state-owner", "state": {"waiting": {"reason": "ErrImagePull", "message": "x:nope not found"}}}
    ]
    record = pod_record(body)
    assert (record.reason, record.message) == ("ErrImagePull", "x:nope not found")


def test_crash_loop_reports_the_last_exit_and_the_log_command() -> None:
    record = pod_record(
        pod(
            "a-2",
            {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
            last={"terminated": {"exitCode": 2, "reason": "Error"}},
            restarts=3,
        )
    )
    assert record.reason == "CrashLoopBackOff" and record.restarts == 3
    assert "last exit 2 (Error)" in record.message
    cond = pods_condition("tars", [record])
    assert "kubectl logs -n tars a-2 --previous" in cond.message


def test_a_crash_looping_agent_between_back_offs_is_still_failing() -> None:
    # Restarted and running for a moment, not ready, after failing exits: the condition must not flap.
    failed = {"terminated": {"exitCode": 1, "reason": "Error"}}
    running = {"running": {"startedAt": "2026-11-30T00:00:00Z"}}
    record = pod_record(pod("a-3", running, last=failed, restarts=4))
    assert record.reason == "CrashLoopBackOff" and "last exit 1 (Error), 4 restarts" in record.message
    # No restart yet, or a clean last exit, or a ready container: not a crash loop.
    assert pod_record(pod("a-4", running, last=failed, restarts=0)).reason == ""
    clean = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    assert pod_record(pod("a-5", running, last=clean, restarts=4)).reason == ""
    ready = pod("a-6", running, last=failed, restarts=4)
    ready["status"]["containerStatuses"][0]["ready"] = True
    assert pod_record(ready).reason == ""


def test_running_pods_are_healthy_and_the_first_failing_pod_is_named() -> None:
    running = pod_record(pod("a-0", {"running": {"startedAt": "2026-01-01T00:00:00Z"}}))
    assert running.reason == ""
    assert pods_condition("ns", [running]).status is True
    failing = [PodRecord(n, "node-b", "ErrImagePull", "", 0) for n in ("b-2", "b-1")]
    cond = pods_condition("ns", [running, *failing])
    assert "pod b-1 on node node-b (and 1 more pods)" in cond.message


def test_tarsnode_status_counts_eligible_nodes_and_adds_pod_health() -> None:
    tn = TarsNode.model_validate(
        {"apiVersion": "tars.hyperlight.dev/v1alpha1", "kind": "TarsNode", "metadata": {"name": "t", "namespace": "ns"}}
    )
    ds = {"desiredNumberScheduled": 0, "observedGeneration": 1}
    _, conds = tarsnode_status(tn, ds, [], [], pods=[], nodes_total=3)
    ready = conds[0]
    assert ready.reason == "NoKVMNodes" and "0 of 3 nodes eligible" in ready.message
    assert [c.type for c in conds] == ["Ready", "Progressing", "Degraded", "PodsHealthy"]
    _, without = tarsnode_status(tn, ds, [], [])
    assert [c.type for c in without] == ["Ready", "Progressing", "Degraded"]


def test_a_fresh_reconciler_remembers_agent_pods() -> None:
    """Regression: the pods' store was created inside another method, so the first pod event raised."""
    from tars_operator.reconciler import Reconciler

    reconciler = Reconciler(kube=None)  # type: ignore[arg-type]  # no API call is made here
    record = PodRecord("a-1", "node-a", "ErrImagePull", "", 0)
    assert reconciler.agent_pod_seen(("ns", "t"), "a-1", record) is True
    assert reconciler.agent_pod_seen(("ns", "t"), "a-1", record) is False
    assert reconciler.agent_pod_seen(("ns", "t"), "a-1", None) is True
