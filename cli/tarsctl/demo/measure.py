"""One model driven over HTTP the three ways the report shows: one request at a time (the latency a
single user meets), at the plan's concurrency, and at saturation (the most req/s it gives).

The benchmark drives the gateway; the baseline drives an agent that holds only that model. Both use
the same load generator (its own process) and the same saturation search, so they compare.
"""

from __future__ import annotations

from typing import Any

from tarsctl.demo import loadgen
from tarsctl.demo.plan import SaturationPlan
from tarsctl.demo.stats import LatencySummary, next_concurrency, summarize


def run(
    url: str, body: Any, requests: int, concurrency: int, warmup: int = 0, duration_s: float | None = None
) -> tuple[loadgen.Result, LatencySummary]:
    job = loadgen.Job(
        url=url, body=body, requests=requests, concurrency=concurrency, warmup=warmup, duration_s=duration_s
    )
    result = loadgen.run(job)
    return result, summarize(result.latencies_ms, result.statuses, result.wall_s)


def saturate(url: str, body: Any, start: int, plan: SaturationPlan) -> dict[str, Any]:
    """Time-bounded steps from ``start`` concurrency, doubling while req/s still grows."""
    steps: list[dict[str, Any]] = []
    concurrency: int | None = min(start, plan.max_concurrency)
    while concurrency is not None:
        _, s = run(url, body, requests=1_000_000, concurrency=concurrency, duration_s=plan.seconds)
        steps.append({"concurrency": concurrency, **s.to_json()})
        history = [(st["concurrency"], st["rps"], st["errors"]) for st in steps]
        concurrency = next_concurrency(history, plan.max_concurrency, plan.min_gain)
    best = max(steps, key=lambda st: st["rps"])
    return {"rps": best["rps"], "concurrency": best["concurrency"], "p95_ms": best["p95_ms"], "steps": steps}
