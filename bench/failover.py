"""Failover, measured: SIGKILL an agent holding a model under steady traffic through the gateway.

Reports the time from the kill to the placement moving and to the model being ready again elsewhere,
the requests that failed (goal 0: the gateway retries on another agent) and latency p50/p99 before and
during the fault. Run: python bench/failover.py [--agents 3 --replicas 2 --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import time
from functools import partial
from typing import Any

from rich.console import Console
from rich.table import Table

from tarsctl.fleet import EXAMPLE_TARSNODE, Fleet, SteadyLoad, until

console = Console()
REQUEST = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["failover is boring"]}]}


def model(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "tars.hyperlight.dev/v1alpha1",
        "kind": "TarsModel",
        "metadata": {"name": "sentiment"},
        "spec": {
            "nodeRef": {"name": "tars"},
            "kind": "sentiment",
            "source": "builtin://sentiment-vader",
            "replicas": replicas,
            "memoryMiB": 32,
        },
    }


def status(fleet: Fleet) -> dict[str, Any]:
    result: dict[str, Any] = fleet.get_json("tarsmodel", "sentiment").get("status", {})
    return result


def placed_off(fleet: Fleet, node: str) -> bool:
    return node not in {p["node"] for p in status(fleet).get("placements", [])}


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000 if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    fleet, nodes = Fleet.create("failover", args.agents, console.print)
    rows = []
    try:
        fleet.start_operator()
        fleet.kubectl("apply", "-n", fleet.namespace, "-f", str(EXAMPLE_TARSNODE))
        fleet.kubectl("apply", "-n", fleet.namespace, "-f", "-", input=json.dumps(model(args.replicas)))
        fleet.start_agents(nodes)
        gateway = fleet.start_gateway()
        url = f"http://127.0.0.1:{gateway.port}/v2/models/sentiment/infer"
        for round_ in range(args.rounds):
            until(lambda: status(fleet).get("readyReplicas") == args.replicas)
            with SteadyLoad(url, REQUEST) as before:
                time.sleep(2)
            victim = status(fleet)["placements"][0]["node"]
            with SteadyLoad(url, REQUEST) as during:
                time.sleep(0.5)
                killed = time.monotonic()
                fleet.processes[f"agent-{victim}"].stop(signal.SIGKILL)
                moved = until(partial(placed_off, fleet, victim))
                ready = until(lambda: status(fleet).get("readyReplicas") == args.replicas)
                time.sleep(0.5)
            failed = sum(n for code, n in during.statuses.items() if code != 200)
            rows.append(
                {
                    "round": round_ + 1,
                    "moved_s": moved - killed,
                    "ready_s": ready - killed,
                    "requests": sum(during.statuses.values()),
                    "failed": failed,
                    "p50_before_ms": p(before.latencies, 0.5),
                    "p99_before_ms": p(before.latencies, 0.99),
                    "p50_during_ms": p(during.latencies, 0.5),
                    "p99_during_ms": p(during.latencies, 0.99),
                }
            )
            fleet.start_agent(victim)
    finally:
        fleet.stop(delete_namespace=True)

    table = Table(title=f"agent SIGKILL under load ({args.agents} agents, {args.replicas} replicas)")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)
    console.print(
        f"median kill -> moved {statistics.median(r['moved_s'] for r in rows):.1f} s "
        f"(Lease 8 s + 1 s check), requests failed {sum(r['failed'] for r in rows)} (goal 0)"
    )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
