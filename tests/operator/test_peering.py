"""Two operator replicas with kopf peering: one acts, the other takes over when it dies."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from pathlib import Path

from tests.fixtures import ControlPlane, OperatorProcess, eventually, start_operator
from tests.operator.test_operator_cluster import apply, tarsnode


def tarsnode_reconciles(op: OperatorProcess) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5).read().decode()
    found = re.search(r'tars_operator_reconciliations_total\{kind="TarsNode",result="success"\} ([0-9.e+]+)', text)
    return float(found.group(1)) if found else 0.0


def _settled(*replicas: OperatorProcess) -> tuple[float, ...] | None:
    before = tuple(tarsnode_reconciles(r) for r in replicas)
    time.sleep(2)
    return before if tuple(tarsnode_reconciles(r) for r in replicas) == before else None


def test_only_the_highest_priority_replica_acts(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    low = start_operator(control_plane, tmp_path / "low.log", priority=200, lifetime=5)
    high = start_operator(control_plane, tmp_path / "high.log", priority=300, lifetime=5)
    try:
        eventually(lambda: "Pausing operations" in low.log_text(), timeout=30, what="the lower replica pausing")
        eventually(lambda: "Pausing operations" in operator.log_text(), timeout=30, what="the session operator pausing")
        # Pausing stops new work; reconciles already under way when the peer appeared may still finish.
        paused_before = eventually(lambda: _settled(low, operator), timeout=30, what="paused replicas going quiet")

        apply(control_plane, namespace, tarsnode("one"))
        eventually(lambda: control_plane.get_json("daemonset", "one-agent", "-n", namespace), what="DaemonSet")
        assert tarsnode_reconciles(high) >= 1
        assert (tarsnode_reconciles(low), tarsnode_reconciles(operator)) == paused_before

        high.process.send_signal(signal.SIGKILL)
        high.process.wait()
        apply(control_plane, namespace, tarsnode("two"))
        eventually(
            lambda: control_plane.get_json("daemonset", "two-agent", "-n", namespace),
            timeout=40,
            what="the surviving replica taking over",
        )
        # The DaemonSet shows before the reconcile that applied it ends (and is counted).
        eventually(lambda: tarsnode_reconciles(low) > paused_before[0], what="the survivor's reconcile counted")
        assert "Resuming operations" in low.log_text()
    finally:
        for replica in (high, low):
            if replica.process.poll() is None:
                replica.process.terminate()
                replica.process.wait(timeout=15)
    eventually(lambda: "Resuming operations" in operator.log_text(), timeout=40, what="the session operator resuming")


def _peers(control_plane: ControlPlane) -> dict[str, object]:
    return dict(control_plane.get_json("clusterkopfpeering", "tars").get("status") or {})


def test_a_replica_joining_an_active_one_never_acts(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    """kopf paused a new replica only after its first peering event, so for about 100 ms it reconciled
    everything alongside the active one; now it starts paused and stays so."""
    names = ("one", "two", "three")
    for name in names:
        apply(control_plane, namespace, tarsnode(name))
    for name in names:
        eventually(lambda name=name: control_plane.get_json("daemonset", f"{name}-agent", "-n", namespace), what=name)
    before = set(_peers(control_plane))
    low = start_operator(control_plane, tmp_path / "low.log", priority=50, lifetime=5)
    try:
        # Joined: its keep-alive is in the peering object, so it has run its peering for a while.
        eventually(lambda: set(_peers(control_plane)) - before, timeout=30, what="the new replica's keep-alive")
        time.sleep(3)
        assert tarsnode_reconciles(low) == 0, low.log_text()[-3000:]
        assert "Resuming operations" not in low.log_text()
    finally:
        low.process.terminate()
        low.process.wait(timeout=15)
