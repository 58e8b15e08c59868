"""Autoscaling, measured the way Knative measures it, on the local control plane with real agents,
the operator and the gateway.

1. A 10x load step with a latency-bound guest (builtin://sleep: each request waits 1 s inside the
   clock.sleep host capability, burning no CPU, like Knative's autoscale sample), so 10x the
   concurrency really is 10x the load on 2 cores. Target: 1 request in flight per replica. Measured:
   time from the step to spec.replicas reaching the 10 replicas the step needs (goal <= 5 s), failed
   requests (goal 0); then back to 1x: replicas going down and failed requests while they do (goal 0).
2. From zero through the gateway: 20 models at zero replicas, each woken by one request (the gateway
   holds it, wakes the model on the agent placement would choose and forwards once it is loaded);
   first-answer p50 (goal <= 50 ms) and p99, beside a warm answer of the same models. The guest's
   compiled code is already on the agents (as an image already pulled on a node). The gateway's
   tars_gateway_answer_duration_seconds{start="cold"} count is read back from its /metrics, and the
   agents' mean time for a cold answer (their tars_agent_answer_duration_seconds{start="cold"}) beside
   it, with the machine's load average while measured.
Run: python bench/autoscale.py [--agents 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time
import urllib.request
from functools import partial
from typing import Any, cast

from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from tars_api import GROUP, VERSION
from tarsctl.demo import loadgen, stats
from tarsctl.fleet import EXAMPLE_TARSNODE, Fleet, post, until

console = Console()
# Long enough that what the gateway and the client add (tens of ms on a busy machine) leaves the
# agents seeing close to the client's concurrency; within the example TarsNode's 2 s CPU budget.
SLEEP_MS = 1000
STEP = 10
COLD_STARTS = 20
SLEEP_REQUEST = {"inputs": [{"name": "sleep_ms", "datatype": "INT32", "shape": [1], "data": [SLEEP_MS]}]}
TEXT_REQUEST = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["scaling is a joy"]}]}


def tarsmodel(name: str, replicas: int, **spec: Any) -> dict[str, Any]:
    body = {"nodeRef": {"name": "tars"}, "replicas": replicas, "memoryMiB": 32, **spec}
    return {"apiVersion": "tars.hyperlight.dev/v1alpha1", "kind": "TarsModel", "metadata": {"name": name}, "spec": body}


def sleeper(replicas: int) -> dict[str, Any]:
    scaling = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 20,
        "metric": "concurrency",
        "target": 1,
        "stableWindow": "20s",
        "panicWindow": "2s",
    }
    return tarsmodel(
        "step", replicas, kind="function", source="builtin://sleep", capabilities=["clock.sleep"], scaling=scaling
    )


def replica_history(fleet: Fleet, name: str, stop: threading.Event, into: list[tuple[float, int]]) -> None:
    """(time.time(), spec.replicas) every 0.1 s, through the API client: a kubectl process per read
    took 1-2 s on the busy machine, too coarse for a figure measured in seconds."""
    api = client.CustomObjectsApi(config.new_client_from_config(str(fleet.state.kubeconfig)))
    while not stop.is_set():
        got = api.get_namespaced_custom_object(GROUP, VERSION, fleet.namespace, "tarsmodels", name)
        model = cast(dict[str, Any], got)
        into.append((time.time(), model["spec"]["replicas"]))
        time.sleep(0.1)


def run_load(url: str, concurrency: int, seconds: float) -> loadgen.Result:
    # duration_s ends the run; requests only bounds it (each connection does at most one a second here).
    requests = concurrency * math.ceil(seconds * 1000 / SLEEP_MS + 10)
    job = loadgen.Job(url=url, body=SLEEP_REQUEST, requests=requests, concurrency=concurrency, duration_s=seconds)
    return loadgen.run(job)


def rate(result: loadgen.Result) -> float:
    return len(result.statuses) / result.wall_s if result.wall_s else 0.0


def load_step(fleet: Fleet, gateway: str) -> dict[str, float]:
    """1x (concurrency 1) until one replica is ready, then 10x for 15 s, then 1x for 30 s."""
    url = f"{gateway}/v2/models/step/infer"
    fleet.kubectl("apply", "-n", fleet.namespace, "-f", "-", input=json.dumps(sleeper(1)))
    until(lambda: fleet.get_json("tarsmodel", "step").get("status", {}).get("readyReplicas") == 1)
    baseline = run_load(url, 1, 8)
    history: list[tuple[float, int]] = []
    stop = threading.Event()
    poller = threading.Thread(target=replica_history, args=(fleet, "step", stop, history), daemon=True)
    poller.start()
    step = run_load(url, STEP, 15)
    down = run_load(url, 1, 30)
    stop.set()
    poller.join()
    wanted = STEP  # 10 in flight at 1 per replica
    # From the step's first request (the load generator's own clock), not from starting its process.
    started = step.started_at
    reached = next((t - started for t, r in history if t >= started and r >= wanted), math.nan)
    after = [r for t, r in history if t >= down.started_at]
    ok = [ms for ms, code in zip(step.latencies_ms, step.statuses, strict=True) if code == 200]
    return {
        "baseline_rps": rate(baseline),
        "step_rps": rate(step),
        "step_ratio": rate(step) / rate(baseline) if rate(baseline) else math.nan,
        "replicas_wanted": wanted,
        "max_replicas_seen": max((r for _, r in history), default=0),
        "to_replicas_s": reached,
        "step_requests": len(step.statuses),
        "step_failed": sum(code != 200 for code in step.statuses),
        "step_p50_ms": stats.percentile(ok, 50),
        "step_p99_ms": stats.percentile(ok, 99),
        "replicas_after_scale_down": after[-1] if after else 0,
        "scale_down_requests": len(down.statuses),
        "scale_down_failed": sum(code != 200 for code in down.statuses),
    }


def reconciled(fleet: Fleet, name: str) -> bool:
    return bool(fleet.get_json("tarsmodel", name).get("status", {}).get("conditions"))


def cold_totals(base: str, metric: str) -> tuple[float, float]:
    """(count, sum in seconds) of the cold answers in the histogram ``metric`` at ``base``/metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    cold = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("start") == "cold"
    ]
    return (
        sum(s.value for s in cold if s.name == f"{metric}_count"),
        sum(s.value for s in cold if s.name == f"{metric}_sum"),
    )


def agents_cold_totals(agent_ports: list[int]) -> tuple[float, float]:
    totals = [cold_totals(f"http://127.0.0.1:{p}", "tars_agent_answer_duration_seconds") for p in agent_ports]
    return sum(c for c, _ in totals), sum(s for _, s in totals)


def mean_ms(after: tuple[float, float], before: tuple[float, float]) -> float:
    count = after[0] - before[0]
    return 1000 * (after[1] - before[1]) / count if count else math.nan


def from_zero(fleet: Fleet, gateway: str, agent_ports: list[int]) -> dict[str, float]:
    names = [f"asleep-{i}" for i in range(COLD_STARTS)]
    spec = {"kind": "sentiment", "source": "builtin://sentiment-vader"}
    items = [tarsmodel(name, 0, **spec) for name in ["asleep-prime", *names]]
    listed = {"apiVersion": "v1", "kind": "List", "items": items}
    fleet.kubectl("apply", "-n", fleet.namespace, "-f", "-", input=json.dumps(listed))
    for name in ["asleep-prime", *names]:
        until(partial(reconciled, fleet, name))
    # The guest's compiled code on every agent, as a node keeps the images it pulled.
    for port in agent_ports:
        post(f"http://127.0.0.1:{port}/v2/models/asleep-prime/infer", TEXT_REQUEST)
    time.sleep(2)  # let the gateway see every model
    gateway_before = cold_totals(gateway, "tars_gateway_answer_duration_seconds")
    agents_before = agents_cold_totals(agent_ports)
    load_1m, load_5m, _ = os.getloadavg()
    cold: list[float] = []
    warm: list[float] = []
    failed = 0
    for name in names:
        for into in (cold, warm):
            started = time.perf_counter()
            status, _ = post(f"{gateway}/v2/models/{name}/infer", TEXT_REQUEST)
            into.append((time.perf_counter() - started) * 1000)
            failed += status != 200
    return {
        "cold_starts": len(cold),
        "cold_failed": failed,
        "first_answer_p50_ms": stats.percentile(cold, 50),
        "first_answer_p99_ms": stats.percentile(cold, 99),
        "warm_answer_p50_ms": stats.percentile(warm, 50),
        "cold_counted_by_gateway": cold_totals(gateway, "tars_gateway_answer_duration_seconds")[0] - gateway_before[0],
        # Where a cold answer's time goes: inside the agent (load and call) against the whole trip.
        "agent_cold_mean_ms": mean_ms(agents_cold_totals(agent_ports), agents_before),
        # The machine's load when the cold starts were measured (2 cores, shared): report it beside them.
        "load_average_1m": load_1m,
        "load_average_5m": load_5m,
    }


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
        zero = from_zero(fleet, gateway, [a.port for a in agents])
    finally:
        fleet.stop(delete_namespace=True)
    table = Table(title="autoscaling on the local control plane")
    table.add_column("measure")
    table.add_column("value")
    table.add_column("goal")
    goals = {
        "to_replicas_s": "<= 5 s",
        "step_failed": "0",
        "scale_down_failed": "0",
        "step_ratio": "~10",
        "first_answer_p50_ms": "<= 50 ms",
    }
    for key, value in {**step, **zero}.items():
        table.add_row(key, f"{value:.1f}" if isinstance(value, float) else str(value), goals.get(key, ""))
    console.print(table)
    print(json.dumps({**step, **zero}))


if __name__ == "__main__":
    main()
