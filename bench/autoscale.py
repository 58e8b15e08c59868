"""Autoscaling, measured on the local control plane with real agents and the gateway.

1. A 10x load step (concurrency 1 -> 10; the target is the rate one replica carried at concurrency 1):
   time from the step to spec.replicas reaching what the step's measured rate needs (goal <= 5 s),
   and latency p50/p99 during the step.
2. Scale from zero: a model at zero replicas, first answer through the gateway and straight from an
   agent (goal <= 50 ms; Knative's activator takes seconds).
Run: python bench/autoscale.py [--agents 3]
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from functools import partial
from typing import Any

from rich.console import Console
from rich.table import Table

from tarsctl.demo import loadgen, stats
from tarsctl.fleet import EXAMPLE_TARSNODE, Fleet, post, until

console = Console()
REQUEST = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["scaling is a joy"]}]}
BASE_CONCURRENCY = 1


def tarsmodel(name: str, replicas: int, scaling: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "tars.hyperlight.dev/v1alpha1",
        "kind": "TarsModel",
        "metadata": {"name": name},
        "spec": {
            "nodeRef": {"name": "tars"},
            "kind": "sentiment",
            "source": "builtin://sentiment-vader",
            "replicas": replicas,
            "memoryMiB": 32,
            "scaling": scaling,
        },
    }


def reconciled(fleet: Fleet, name: str) -> bool:
    return bool(fleet.get_json("tarsmodel", name).get("status", {}).get("conditions"))


def replica_history(fleet: Fleet, name: str, stop: threading.Event, into: list[tuple[float, int]]) -> None:
    while not stop.is_set():
        into.append((time.monotonic(), fleet.get_json("tarsmodel", name)["spec"]["replicas"]))
        time.sleep(0.2)


def load_step(fleet: Fleet, gateway: str) -> dict[str, float]:
    """Baseline at concurrency 1 sets the target (requests per second one replica should carry), so
    the baseline needs one replica; then a step to 10x the concurrency. The replicas wanted follow
    from the rate the step really reached on this machine, which is reported beside it."""
    url = f"{gateway}/v2/models/step/infer"
    fleet.kubectl("apply", "-n", fleet.namespace, "-f", "-", input=json.dumps(tarsmodel("step", 1, {})))
    until(lambda: fleet.get_json("tarsmodel", "step").get("status", {}).get("readyReplicas") == 1)
    baseline = loadgen.run(loadgen.Job(url=url, body=REQUEST, requests=3000, concurrency=1, duration_s=6))
    baseline_rps = len(baseline.statuses) / baseline.wall_s
    target = round(baseline_rps, 1)
    scaling = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 10,
        "metric": "rps",
        "target": target,
        "stableWindow": "30s",
        "panicWindow": "4s",
    }
    fleet.kubectl("apply", "-n", fleet.namespace, "-f", "-", input=json.dumps(tarsmodel("step", 1, scaling)))
    history: list[tuple[float, int]] = []
    stop = threading.Event()
    poller = threading.Thread(target=replica_history, args=(fleet, "step", stop, history), daemon=True)
    started = time.monotonic()
    poller.start()
    result = loadgen.run(
        loadgen.Job(url=url, body=REQUEST, requests=30_000, concurrency=10 * BASE_CONCURRENCY, duration_s=20)
    )
    stop.set()
    poller.join()
    step_rps = len(result.statuses) / result.wall_s
    wanted = min(10, math.ceil(step_rps / target))
    reached = next((t - started for t, replicas in history if replicas >= wanted), float("nan"))
    ok = [ms for ms, code in zip(result.latencies_ms, result.statuses, strict=True) if code == 200]
    return {
        "baseline_rps (= target per replica)": baseline_rps,
        "step_rps": step_rps,
        "step_ratio": step_rps / baseline_rps,
        "replicas_wanted": wanted,
        "max_replicas_seen": max((r for _, r in history), default=0),
        "to_replicas_s": reached,
        "requests": len(result.statuses),
        "failed": sum(code != 200 for code in result.statuses),
        "p50_ms": stats.percentile(ok, 50),
        "p99_ms": stats.percentile(ok, 99),
    }


def from_zero(fleet: Fleet, gateway: str, agent_port: int) -> dict[str, float]:
    results = {}
    for name, base in (("asleep-gw", gateway), ("asleep-agent", f"http://127.0.0.1:{agent_port}")):
        fleet.kubectl("apply", "-n", fleet.namespace, "-f", "-", input=json.dumps(tarsmodel(name, 0, {})))
        until(partial(reconciled, fleet, name))
        time.sleep(1)  # let the gateway and agents see the model
        started = time.perf_counter()
        status, _ = post(f"{base}/v2/models/{name}/infer", REQUEST)
        results[f"first_answer_via_{'gateway' if base == gateway else 'agent'}_ms"] = (
            (time.perf_counter() - started) * 1000 if status == 200 else float("nan")
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=3)
    args = parser.parse_args()
    fleet, nodes = Fleet.create("autoscale", args.agents, console.print)
    try:
        fleet.start_operator()
        fleet.kubectl("apply", "-n", fleet.namespace, "-f", str(EXAMPLE_TARSNODE))
        agents = fleet.start_agents(nodes)
        gateway = f"http://127.0.0.1:{fleet.start_gateway().port}"
        step = load_step(fleet, gateway)
        zero = from_zero(fleet, gateway, agents[0].port)
    finally:
        fleet.stop(delete_namespace=True)
    table = Table(title="autoscaling on the local control plane")
    table.add_column("measure")
    table.add_column("value")
    table.add_column("goal")
    goals = {
        "to_replicas_s": "<= 5 s",
        "first_answer_via_gateway_ms": "<= 50 ms",
        "first_answer_via_agent_ms": "<= 50 ms",
    }
    for key, value in {**step, **zero}.items():
        table.add_row(key, f"{value:.1f}" if isinstance(value, float) else str(value), goals.get(key, ""))
    console.print(table)
    print(json.dumps({**step, **zero}))


if __name__ == "__main__":
    main()
