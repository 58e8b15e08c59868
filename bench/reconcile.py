"""How fast the operator turns objects into running infrastructure, on the local control plane.

Applies N TarsNodes and M TarsModels (with three agents' Leases standing for three nodes) and
reports p50/p95 of apply -> DaemonSet present and apply -> placements written. Goal: p95 under 1 s.
Run: python bench/reconcile.py [--nodes 50 --models 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from datetime import UTC, datetime

from kubernetes import client, watch
from rich.console import Console
from rich.table import Table

from tars_api.lease import AgentReport, lease_body
from tarsctl import localcluster
from tarsctl.fleet import Fleet
from tarsctl.localcluster import load_api_client

console = Console()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def watch_until(list_fn, namespace: str, done: dict[str, float], expected: int, predicate, **kwargs) -> None:  # type: ignore[no-untyped-def]
    for event in watch.Watch().stream(list_fn, namespace=namespace, timeout_seconds=120, **kwargs):
        obj = event["object"]
        name = obj["metadata"]["name"] if isinstance(obj, dict) else obj.metadata.name
        if name not in done and predicate(obj):
            done[name] = time.perf_counter()
        if len(done) >= expected:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--models", type=int, default=200)
    args = parser.parse_args()

    fleet, _ = Fleet.create("bench", 3, console.print)
    state, namespace = fleet.state, fleet.namespace
    fleet.start_operator()
    api = load_api_client(state)
    apps, custom, coordination = client.AppsV1Api(api), client.CustomObjectsApi(api), client.CoordinationV1Api(api)
    group = ("tars.hyperlight.dev", "v1alpha1", namespace)
    try:
        for i in range(3):
            report = AgentReport(
                address=f"{localcluster.host_ip()}:{9400 + i}", backend="wasmtime", capacity_mib=1_000_000, ready=True
            )
            for tn in range(args.nodes):
                body = lease_body(
                    f"bench-node-{i}", namespace, f"agent-{i}", report, datetime.now(UTC), tarsnode=f"tn-{tn}"
                )
                body["metadata"]["name"] = f"tn-{tn}-bench-node-{i}"
                # Nothing renews these Leases during the run, so they declare a long life.
                body["spec"]["leaseDurationSeconds"] = 3600
                coordination.create_namespaced_lease(namespace, body)

        ds_seen: dict[str, float] = {}
        watcher = threading.Thread(
            target=watch_until, args=(apps.list_namespaced_daemon_set, namespace, ds_seen, args.nodes, lambda o: True)
        )
        watcher.start()
        applied: dict[str, float] = {}
        for tn in range(args.nodes):
            name = f"tn-{tn}"
            applied[f"{name}-agent"] = time.perf_counter()
            custom.create_namespaced_custom_object(
                *group,
                "tarsnodes",
                {
                    "apiVersion": "tars.hyperlight.dev/v1alpha1",
                    "kind": "TarsNode",
                    "metadata": {"name": name},
                    "spec": {},
                },
            )
        watcher.join()
        node_latency = [ds_seen[n] - applied[n] for n in ds_seen]

        placed: dict[str, float] = {}
        watcher = threading.Thread(
            target=watch_until,
            args=(
                custom.list_namespaced_custom_object,
                namespace,
                placed,
                args.models,
                lambda o: bool((o.get("status") or {}).get("placements")),
            ),
            kwargs={"group": group[0], "version": group[1], "plural": "tarsmodels"},
        )
        watcher.start()
        model_applied: dict[str, float] = {}
        for m in range(args.models):
            name = f"m-{m}"
            model_applied[name] = time.perf_counter()
            custom.create_namespaced_custom_object(
                *group,
                "tarsmodels",
                {
                    "apiVersion": "tars.hyperlight.dev/v1alpha1",
                    "kind": "TarsModel",
                    "metadata": {"name": name},
                    "spec": {
                        "nodeRef": {"name": f"tn-{m % args.nodes}"},
                        "kind": "sentiment",
                        "source": "builtin://sentiment-vader",
                        "memoryMiB": 32,
                    },
                },
            )
        watcher.join()
        model_latency = [placed[n] - model_applied[n] for n in placed]

        table = Table(title="apply -> reconciled, local control plane (2 cores)")
        for column in ("what", "objects", "p50 ms", "p95 ms", "max ms", "goal"):
            table.add_column(column)
        for what, values in (("TarsNode -> DaemonSet", node_latency), ("TarsModel -> placements", model_latency)):
            table.add_row(
                what,
                str(len(values)),
                f"{statistics.median(values) * 1000:.0f}",
                f"{percentile(values, 0.95) * 1000:.0f}",
                f"{max(values) * 1000:.0f}",
                "p95 < 1000",
            )
        console.print(table)
        print(
            json.dumps(
                {
                    "tarsnode_p95_ms": percentile(node_latency, 0.95) * 1000,
                    "tarsmodel_p95_ms": percentile(model_latency, 0.95) * 1000,
                }
            )
        )
    finally:
        fleet.stop(delete_namespace=True)


if __name__ == "__main__":
    main()
