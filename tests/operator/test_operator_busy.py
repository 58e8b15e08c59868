"""A busy operator still knows which agents are alive: against the real API server, agents that renew
their Leases keep their models while the operator is swamped with the reconciles their own reports
cause (at 100 models, kopf's index of Leases fell seconds behind and healthy agents looked lost)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client, config

from tests.fixtures import ControlPlane, eventually
from tests.operator.test_operator_cluster import apply, lease_for, tarsnode

pytestmark = pytest.mark.usefixtures("operator")
MODELS = 120
# Short, so an index that trails the API server by a few seconds shows; the renewals come ten
# times as often, so a renewal missed under load is no reason to call the agent lost.
LEASE_S = 5
RENEW_EVERY_S = 0.5


def models(namespace: str) -> dict[str, Any]:
    items = [
        {
            "apiVersion": "tars.hyperlight.dev/v1alpha1",
            "kind": "TarsModel",
            "metadata": {"name": f"m{i}", "namespace": namespace},
            "spec": {
                "nodeRef": {"name": "tars"},
                "kind": "sentiment",
                "source": "builtin://sentiment-vader",
                "memoryMiB": 4,
            },
        }
        for i in range(MODELS)
    ]
    return {"apiVersion": "v1", "kind": "List", "items": items}


class Agents:
    """Simulated agents renewing their Leases from a thread, each report flipping half their models
    between loaded and loading (as agents loading 100 models report): every renewal changes what the
    operator must reconcile."""

    def __init__(self, cp: ControlPlane, namespace: str, nodes: tuple[str, ...]) -> None:
        self.api = client.CoordinationV1Api(config.new_client_from_config(str(cp.kubeconfig)))
        self.namespace, self.nodes = namespace, nodes
        self.stop = threading.Event()
        self.renewals = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def lease(self, index: int, node: str, tick: int) -> dict[str, Any]:
        loaded = {f"{self.namespace}/m{i}": tick % 2 == 0 or i % 2 == 0 for i in range(MODELS)}
        lease = lease_for(self.namespace, node, 9700 + index, loaded, renewed=datetime.now(UTC))
        lease["spec"]["leaseDurationSeconds"] = LEASE_S
        return lease

    def renew(self, tick: int) -> None:
        for index, node in enumerate(self.nodes):
            lease = self.lease(index, node, tick)
            name = lease["metadata"]["name"]
            if tick == 0:
                self.api.create_namespaced_lease(self.namespace, lease)
            else:
                patch = {"metadata": {"annotations": lease["metadata"]["annotations"]}, "spec": lease["spec"]}
                self.api.patch_namespaced_lease(name, self.namespace, patch)
        self.renewals = tick + 1

    def run(self) -> None:
        tick = 1
        while not self.stop.wait(RENEW_EVERY_S):
            try:
                self.renew(tick)
                tick += 1
            except Exception as exc:  # a request lost under load: the next tick renews
                print(f"renewal {tick} failed: {exc}")

    def __enter__(self) -> Agents:
        self.renew(0)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def placements(cp: ControlPlane, namespace: str) -> dict[str, list[str]]:
    listed = cp.get_json("tarsmodels", "-n", namespace)
    return {
        item["metadata"]["name"]: sorted(p["node"] for p in (item.get("status") or {}).get("placements", []))
        for item in listed["items"]
    }


def all_placed(cp: ControlPlane, namespace: str) -> dict[str, list[str]] | None:
    found = placements(cp, namespace)
    return found if len(found) == MODELS and all(found.values()) else None


def test_agents_renewing_keep_their_models_while_the_operator_is_busy(
    control_plane: ControlPlane, namespace: str, simulated_nodes: tuple[str, ...]
) -> None:
    apply(control_plane, namespace, tarsnode())
    with Agents(control_plane, namespace, simulated_nodes[:2]) as agents:
        control_plane.kubectl("create", "-f", "-", input=json.dumps(models(namespace)))  # one request each
        before = eventually(
            lambda: all_placed(control_plane, namespace),
            timeout=300,
            what=f"all {MODELS} models placed",
        )
        # Each renewal of either agent wakes every model's reconcile; four times the Lease's duration.
        start = agents.renewals
        eventually(lambda: agents.renewals >= start + 4 * LEASE_S / RENEW_EVERY_S, timeout=180, what="renewals")
        after = placements(control_plane, namespace)
    assert agents.renewals > start
    moved = {name: (before[name], after.get(name)) for name in before if after.get(name) != before[name]}
    assert moved == {}, f"{len(moved)} models moved between agents that kept renewing, e.g. {list(moved.items())[:3]}"
    events = control_plane.get_json("events", "-n", namespace, "--field-selector", "reason=Placed")
    assert [e["message"] for e in events["items"]] == []
