"""Autoscaling, measured on the local control plane with real agents and the gateway.

1. A 10x load step (concurrency 1 -> 10 against target 2 in-flight per replica): time from the step to
   spec.replicas reaching the target (goal <= 5 s) and to those replicas being ready, and latency
   p50/p99 during the step.
2. Scale from zero: a model at zero replicas, first answer through the gateway and straight from an
   agent (goal <= 50 ms; Knative's activator takes seconds).
Run: python bench/autoscale.py [--agents 3]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tarsctl import localcluster
from tarsctl.demo import loadgen, stats
from tarsctl.fleet import Fleet, post

console = Console()
REQUEST = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["scaling is a joy"]}]}
TARGET = 2.0
STEP_CONCURRENCY = 10


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


def model(fleet: Fleet, name: str) -> dict[str, Any]:
    out = fleet.kubectl("get", "tarsmodel", name, "-n", fleet.namespace, "-o", "json").stdout
    result: dict[str, Any] = json.loads(out)
    return result


def until(predicate: Any, timeout: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError("condition not reached")


def load_step(fleet: Fleet, gateway: str) -> dict[str, float]:
    scaling = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 10,
        "target": TARGET,
        "stableWindow": "30s",
        "panicWindow": "4s",
    }
    fleet.kubectl("apply", "-n", fleet.namespace, "-f", "-", input=json.dumps(tarsmodel("step", 1, scaling)))
    until(lambda: model(fleet, "step").get("status", {}).get("readyReplicas") == 1)
    url = f"{gateway}/v2/models/step/infer"
    loadgen.run(loadgen.Job(url=url, body=REQUEST, requests=200, concurrency=1, duration_s=8))
    wanted = math.ceil(STEP_CONCURRENCY / TARGET)
    step = loadgen.Background(
        loadgen.Job(url=url, body=REQUEST, requests=100_000, concurrency=STEP_CONCURRENCY, duration_s=25)
    )
    started = time.monotonic()
    try:
        scaled = until(lambda: model(fleet, "step")["spec"]["replicas"] >= wanted)
        ready = until(lambda: model(fleet, "step").get("status", {}).get("readyReplicas", 0) >= wanted)
    finally:
        result = step.wait()
    ok = [ms for ms, code in zip(result.latencies_ms, result.statuses, strict=True) if code == 200]
    return {
        "replicas_wanted": wanted,
        "to_replicas_s": scaled - started,
        "to_ready_s": ready - started,
        "requests": len(result.statuses),
        "failed": sum(code != 200 for code in result.statuses),
        "p50_ms": stats.percentile(ok, 50),
        "p99_ms": stats.percentile(ok, 99),
    }


def from_zero(fleet: Fleet, gateway: str, agent_port: int) -> dict[str, float]:
    results = {}
    for name, base in (("asleep-gw", gateway), ("asleep-agent", f"http://127.0.0.1:{agent_port}")):
        fleet.kubectl("apply", "-n", fleet.namespace, "-f", "-", input=json.dumps(tarsmodel(name, 0, {})))
        until(lambda n=name: model(fleet, n).get("status", {}).get("conditions"))
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
    state = localcluster.up(console.print)
    namespace = f"autoscale-{uuid.uuid4().hex[:6]}"
    localcluster.kubectl(state, "create", "namespace", namespace)
    localcluster.kubectl(state, "apply", "--server-side", "-f", str(Path(__file__).parents[1] / "crds"))
    nodes = [f"autoscale-{i}" for i in range(args.agents)]
    for node in nodes:
        localcluster.add_node(state, node, kvm=True)
    fleet = Fleet(state, namespace, Path(tempfile.mkdtemp(prefix="tars-autoscale-")))
    try:
        fleet.start_operator()
        fleet.kubectl("apply", "-n", namespace, "-f", str(Path(__file__).parents[1] / "examples" / "tarsnode.yaml"))
        agents = fleet.start_agents(nodes)
        gateway = f"http://127.0.0.1:{fleet.start_gateway().port}"
        step = load_step(fleet, gateway)
        zero = from_zero(fleet, gateway, agents[0].port)
    finally:
        fleet.stop()
        localcluster.kubectl(state, "delete", "namespace", namespace, "--wait=false", check=False)
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
