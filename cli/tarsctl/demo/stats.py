"""Latency and throughput statistics over what the load generator measured (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must lie in 0..100, not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class LatencySummary:
    requests: int  # every request sent, whatever its answer
    ok: int  # answered 2xx
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    wall_s: float
    rps: float  # successful requests per second of wall time

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(latencies_ms: Sequence[float], statuses: Sequence[int], wall_s: float) -> LatencySummary:
    """Percentiles over successful requests only: an error answered in 1 ms must not flatter p50."""
    if len(latencies_ms) != len(statuses):
        raise ValueError("one status per latency")
    ok = [lat for lat, status in zip(latencies_ms, statuses, strict=True) if 200 <= status < 300]
    if not ok:
        nan = float("nan")
        return LatencySummary(len(statuses), 0, len(statuses), nan, nan, nan, nan, nan, wall_s, 0.0)
    return LatencySummary(
        requests=len(statuses),
        ok=len(ok),
        errors=len(statuses) - len(ok),
        p50_ms=percentile(ok, 50),
        p95_ms=percentile(ok, 95),
        p99_ms=percentile(ok, 99),
        mean_ms=sum(ok) / len(ok),
        max_ms=max(ok),
        wall_s=wall_s,
        rps=len(ok) / wall_s if wall_s > 0 else 0.0,
    )


def ratio(after: float, before: float) -> float:
    """after / before, infinite when before is zero and after is not (never a division error)."""
    if before == 0:
        return 1.0 if after == 0 else math.inf
    return after / before


def next_concurrency(steps: Sequence[tuple[int, float, int]], limit: int, min_gain: float) -> int | None:
    """The concurrency of the next saturation step, or None once throughput stopped growing.

    ``steps`` are (concurrency, successful req/s, errors) so far. Concurrency doubles while each step
    adds at least ``min_gain`` (a share) over the best req/s before it; errors (a full queue answering
    429) or the limit end the search too.
    """
    if not steps:
        raise ValueError("no step measured yet")
    concurrency, rps, errors = steps[-1]
    best_before = max((r for _, r, _ in steps[:-1]), default=0.0)
    if errors or concurrency >= limit or (len(steps) > 1 and rps < best_before * (1 + min_gain)):
        return None
    return min(limit, concurrency * 2)
