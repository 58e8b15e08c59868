"""The operator does not wake itself: its own writes, echoed back by the watches, cost no more
requests and no more reconciles. Counted from the operator's own metrics against the real API server;
this module runs its own operator, so only its objects move the counters."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tars_api.labels import FIELD_MANAGER, MODEL_LABEL
from tars_operator.reconciler import APPLIED
from tests.fixtures import ControlPlane, OperatorProcess, eventually, start_operator
from tests.operator.test_operator_cluster import apply, lease_for, put_lease, tarsmodel, tarsnode

pytestmark = pytest.mark.usefixtures("operator")
Counts = dict[str, float]


def counters(operator: OperatorProcess) -> Counts:
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        lines = response.read().decode().splitlines()
    return {
        name: float(value)
        for line in lines
        if line.startswith(("tars_operator_api_requests_total{", "tars_operator_reconciliations_total{"))
        for name, value in [line.rsplit(" ", 1)]
    }


def settled(operator: OperatorProcess, quiet_s: float = 3.0, timeout: float = 90.0) -> Counts:
    """The counters once they have not moved for ``quiet_s``."""
    deadline = time.monotonic() + timeout
    last = counters(operator)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = counters(operator)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise AssertionError(f"the operator never went quiet: {last}")


def others_gone(control_plane: ControlPlane) -> None:
    """Waits out earlier tests' namespaces: their objects, deleted meanwhile, would move the counters."""
    eventually(
        lambda: (
            not any(ns["status"].get("phase") == "Terminating" for ns in control_plane.get_json("namespaces")["items"])
        ),
        timeout=180,
        what="earlier namespaces gone",
    )


def delta(before: Counts, after: Counts, fragment: str) -> float:
    return sum(value - before.get(name, 0.0) for name, value in after.items() if fragment in name)


def requests(verb: str, resource: str) -> str:
    return f'tars_operator_api_requests_total{{resource="{resource}",verb="{verb}"}}'


def measured(operator: OperatorProcess, change: Callable[[int], object], attempts: int = 3) -> tuple[Counts, Counts]:
    """Counters around ``change(attempt)``; measured again if the TarsNode was reconciled meanwhile
    (the 30 s safety net or an agent's Lease expiring reconcile it and its models on their own)."""
    for attempt in range(attempts):
        before = settled(operator)
        change(attempt)
        after = settled(operator)
        if not delta(before, after, 'kind="TarsNode"'):
            return before, after
    raise AssertionError("the TarsNode was reconciled during every measurement")


def test_a_new_tarsnode_applies_each_child_once(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    others_gone(control_plane)
    before = settled(operator)
    apply(control_plane, namespace, tarsnode())
    eventually(lambda: control_plane.get_json("daemonset", "tars-agent", "-n", namespace), what="DaemonSet")
    after = settled(operator)
    # Each child created woke the TarsNode, which applied every child again: two or more each.
    assert delta(before, after, requests("PATCH", "daemonsets")) == 1
    assert delta(before, after, requests("PATCH", "configmaps")) == 1


def test_a_status_write_costs_the_model_no_more_writes(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    others_gone(control_plane)
    apply(control_plane, namespace, tarsnode())
    put_lease(control_plane, namespace, lease_for(namespace, "node-a", 9401, {}, capacity=10_000))
    apply(control_plane, namespace, tarsmodel("quiet"))
    eventually(
        lambda: control_plane.get_json("tarsmodel", "quiet", "-n", namespace).get("status", {}).get("placements"),
        what="placements",
    )
    before, after = measured(
        operator, lambda attempt: apply(control_plane, namespace, tarsmodel("quiet", memoryMiB=200 + attempt))
    )
    # One spec change: one status write, and no re-sent Service or slices on the write's echo.
    assert delta(before, after, requests("PATCH", "tarsmodels/status")) == 1
    assert delta(before, after, requests("PATCH", "services")) == 0


def test_a_restarted_operator_sends_no_unchanged_children_again(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    """A new operator process (here: a higher-priority replica taking over) reconciles every model and
    TarsNode, and finds their children as it would apply them: it sends again only the one that is
    not (its digest annotation changed by a write the old process took for its own)."""
    others_gone(control_plane)
    apply(control_plane, namespace, tarsnode())
    put_lease(control_plane, namespace, lease_for(namespace, "node-a", 9411, {}, capacity=10_000))
    for name in ("r1", "r2"):
        apply(control_plane, namespace, tarsmodel(name))
    for name in ("r1", "r2"):
        eventually(
            lambda name=name: control_plane.get_json("endpointslices", "-n", namespace, "-l", f"{MODEL_LABEL}={name}")[
                "items"
            ],
            what=f"{name} routed",
        )
    settled(operator)
    stale = {"metadata": {"annotations": {APPLIED: "stale"}}}
    control_plane.kubectl(
        "patch", "configmap", "tars-agent", "-n", namespace, "--type=merge", f"--field-manager={FIELD_MANAGER}",
        "-p", json.dumps(stale),
    )  # fmt: skip
    fresh = start_operator(control_plane, tmp_path / "fresh.log", priority=500, lifetime=5)
    try:
        eventually(lambda: delta({}, counters(fresh), 'kind="TarsModel"') >= 2, timeout=60, what="models reconciled")
        after = settled(fresh)
        assert delta({}, after, 'kind="TarsNode"') >= 1
        for resource in ("endpointslices", "services", "daemonsets", "serviceaccounts", "roles", "rolebindings"):
            assert delta({}, after, requests("PATCH", resource)) == 0, resource
        # Before, a new process applied all eight children of every TarsNode again.
        assert delta({}, after, requests("PATCH", "configmaps")) == 1
        annotations = control_plane.get_json("configmap", "tars-agent", "-n", namespace)["metadata"]["annotations"]
        assert annotations[APPLIED] not in ("stale", None)
    finally:
        fresh.process.terminate()
        fresh.process.wait(timeout=15)
