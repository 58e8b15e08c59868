"""How fast the operator turns objects into running infrastructure, on the local control plane.

Applies N TarsNodes and M TarsModels (with three agents' Leases standing for three nodes) and
reports p50/p95 of apply -> DaemonSet present, apply -> placements written and apply -> routed (the
model's EndpointSlice lists its agents; simulated agents never load, so the endpoints stay unready).
Goal: p95 under 1 s. Then, from the operator's own metrics and /proc: API requests per reconcile, RSS,
CPU while nothing changes, and how long a restarted operator takes to reconcile every model again
(goal 30 s). Run: python bench/reconcile.py [--nodes 50 --models 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from kubernetes import client, watch
from rich.console import Console
from rich.table import Table

from tars_api.labels import MODEL_LABEL, OPERATOR_SLICES
from tars_api.lease import AgentReport, lease_body
from tarsctl import localcluster
from tarsctl.fleet import Fleet
from tarsctl.localcluster import load_api_client

console = Console()
REQUESTS = "tars_operator_api_requests_total"
API_SECONDS = "tars_operator_api_request_duration_seconds"


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


def scrape(port: int) -> dict[str, float]:
    """The operator's counters and histograms' sums and counts, summed per metric name and first
    label value (the exposition sorts labels: the API request metrics' first is the resource)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        metric, _, labels = name.partition("{")
        if line.startswith("tars_operator_") and metric.endswith(("_total", "_sum", "_count")):
            first = labels.split('"')[1] if '"' in labels else ""
            for key in (metric, f"{metric}:{first}"):
                totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def mean_api_ms(counters: dict[str, float]) -> dict[str, int]:
    """Mean time the API server took per request, by resource (the operator's worker threads' view)."""
    prefix = f"{API_SECONDS}_count:"
    return {
        k[len(prefix) :]: round(1000 * counters[f"{API_SECONDS}_sum:{k[len(prefix) :]}"] / n)
        for k, n in counters.items()
        if k.startswith(prefix) and n
    }


def settled(port: int, quiet_s: float = 3.0, timeout: float = 120.0) -> dict[str, float]:
    """The operator's counters once its API requests stopped moving: the latencies above are done
    when the last model is routed, while its Services (applied a few at a time) may still be going."""
    deadline = time.perf_counter() + timeout
    last, since = scrape(port), time.perf_counter()
    while time.perf_counter() < deadline and time.perf_counter() - since < quiet_s:
        time.sleep(0.5)
        now = scrape(port)
        if now.get(REQUESTS) != last.get(REQUESTS):
            last, since = now, time.perf_counter()
    return last


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def converge_after_restart(fleet: Fleet, models: int, timeout: float = 300) -> float:
    """Restarts the operator; seconds until it has reconciled every model once."""
    fleet.processes["operator"].stop()
    started = time.perf_counter()
    operator = fleet.start_operator()
    while time.perf_counter() - started < timeout:
        if scrape(operator.port).get("tars_operator_reconciliations_total:TarsModel", 0) >= models:
            return time.perf_counter() - started
        time.sleep(0.2)
    return float("nan")


def watch_routed(discovery: client.DiscoveryV1Api, namespace: str, done: dict[str, float], expected: int) -> None:
    stream = watch.Watch().stream(
        discovery.list_namespaced_endpoint_slice, namespace, label_selector=OPERATOR_SLICES, timeout_seconds=120
    )
    for event in stream:
        obj = event["object"]
        model = (obj.metadata.labels or {}).get(MODEL_LABEL)
        if model and model not in done and obj.endpoints:
            done[model] = time.perf_counter()
        if len(done) >= expected:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--models", type=int, default=200)
    args = parser.parse_args()

    fleet, _ = Fleet.create("bench", 3, console.print)
    state, namespace = fleet.state, fleet.namespace
    operator = fleet.start_operator()
    api = load_api_client(state)
    apps, custom, coordination = client.AppsV1Api(api), client.CustomObjectsApi(api), client.CoordinationV1Api(api)
    discovery = client.DiscoveryV1Api(api)
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
        routed: dict[str, float] = {}
        routed_watch = threading.Thread(target=watch_routed, args=(discovery, namespace, routed, args.models))
        routed_watch.start()
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
        routed_watch.join()
        model_latency = [placed[n] - model_applied[n] for n in placed]
        routed_latency = [routed[n] - model_applied[n] for n in routed]

        counters = settled(operator.port)
        requests = counters.get(REQUESTS, 0.0)
        reconciles = counters.get("tars_operator_reconciliations_total", 0.0)
        pid = operator.popen.pid
        before = cpu_seconds(pid)
        time.sleep(10)
        idle_cpu = (cpu_seconds(pid) - before) / 10
        rss = rss_mib(pid)
        restart_s = converge_after_restart(fleet, args.models)

        table = Table(title="apply -> reconciled, local control plane (2 cores)")
        for column in ("what", "objects", "p50 ms", "p95 ms", "max ms", "goal"):
            table.add_column(column)
        rows = (
            ("TarsNode -> DaemonSet", node_latency),
            ("TarsModel -> placements", model_latency),
            ("TarsModel -> routed", routed_latency),
        )
        for what, values in rows:
            table.add_row(
                what,
                str(len(values)),
                f"{statistics.median(values) * 1000:.0f}",
                f"{percentile(values, 0.95) * 1000:.0f}",
                f"{max(values) * 1000:.0f}",
                "p95 < 1000",
            )
        console.print(table)
        console.print(
            f"API requests {requests:.0f} for {reconciles:.0f} reconciles ({requests / max(reconciles, 1):.2f} each, "
            f"{requests / args.models:.1f} per model incl. its TarsNode's share); RSS {rss:.0f} MiB (goal 300 at "
            f"1,000 models); CPU with nothing changing {idle_cpu * 100:.1f}% of a core; restart -> every model "
            f"reconciled {restart_s:.1f} s (goal 30)"
        )
        print(
            json.dumps(
                {
                    "nodes": args.nodes,
                    "models": args.models,
                    "tarsnode_p95_ms": round(percentile(node_latency, 0.95) * 1000),
                    "tarsmodel_p95_ms": round(percentile(model_latency, 0.95) * 1000),
                    "routed_p95_ms": round(percentile(routed_latency, 0.95) * 1000),
                    "placed": len(model_latency),
                    "routed": len(routed_latency),
                    "api_requests": requests,
                    "reconciles": reconciles,
                    "requests_per_reconcile": round(requests / max(reconciles, 1), 2),
                    "requests_by_resource": {
                        k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith(f"{REQUESTS}:")
                    },
                    "api_mean_ms_by_resource": mean_api_ms(counters),
                    "rss_mib": round(rss),
                    "idle_cpu_percent": round(idle_cpu * 100, 1),
                    "restart_converge_s": round(restart_s, 1),
                }
            )
        )
    finally:
        # Deleted while the operator runs: it removes the TarsNodes' finalizers, so the namespace goes
        # now instead of leaving its objects to the next run's operator.
        with contextlib.suppress(subprocess.TimeoutExpired):
            fleet.kubectl("delete", "namespace", namespace, "--timeout=100s", check=False)
        fleet.stop()


if __name__ == "__main__":
    main()
