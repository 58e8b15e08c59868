"""Deployment recommendations derived from measured numbers by stated rules (pure).

For each scenario in the plan (edge, chat, analytics, search, decision making): the candidates are
the measured models of the scenario's kinds; those whose p95 fits the budget qualify; among them the
plan's preference picks one (smallest memory, or lowest p95); replicas are the target rate divided
by what one replica served, rounded up; nodes are what those replicas need in memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from tarsctl.demo.plan import Scenario


@dataclass(frozen=True)
class Measured:
    model: str
    kind: str
    p95_ms: float
    rps: float  # through the gateway, all replicas together
    replicas: int  # replicas that served the benchmark
    rss_mib: float  # per replica


@dataclass(frozen=True)
class Recommendation:
    scenario: str
    model: str | None
    meets_budget: bool
    replicas: int
    nodes: int
    rule: str
    why: str


def recommend(
    scenario_name: str, scenario: Scenario, measured: list[Measured], usable_node_mib: float
) -> Recommendation:
    rule = (
        f"models of kind {', '.join(scenario.model_kinds)} with p95 <= {scenario.p95_budget_ms:g} ms; "
        f"pick the {'smallest in memory' if scenario.prefer == 'smallest' else 'lowest p95'}; "
        f"replicas = ceil({scenario.target_rps:g} req/s / req/s per replica); nodes = replicas x RSS / node memory"
    )
    candidates = [m for m in measured if m.kind in scenario.model_kinds and not math.isnan(m.p95_ms)]
    if not candidates:
        return Recommendation(scenario_name, None, False, 0, 0, rule, "no measured model of these kinds")
    fitting = [m for m in candidates if m.p95_ms <= scenario.p95_budget_ms]
    pool = fitting or candidates
    if scenario.prefer == "smallest" and fitting:
        choice = min(pool, key=lambda m: (m.rss_mib, m.p95_ms))
    else:
        choice = min(pool, key=lambda m: m.p95_ms)
    per_replica = choice.rps / max(1, choice.replicas)
    replicas = math.ceil(scenario.target_rps / per_replica) if per_replica > 0 else 0
    nodes = math.ceil(replicas * max(choice.rss_mib, 1.0) / usable_node_mib) if replicas else 0
    budget_note = (
        f"p95 {choice.p95_ms:.1f} ms fits the {scenario.p95_budget_ms:g} ms budget"
        if fitting
        else f"no candidate fits {scenario.p95_budget_ms:g} ms; closest is p95 {choice.p95_ms:.1f} ms"
    )
    why = (
        f"{budget_note}; one replica served {per_replica:.1f} req/s and holds {choice.rss_mib:.0f} MiB, "
        f"so {scenario.target_rps:g} req/s needs {replicas} replicas on {max(nodes, 1 if replicas else 0)} node(s)"
    )
    return Recommendation(
        scenario_name, choice.model, bool(fitting), replicas, max(nodes, 1 if replicas else 0), rule, why
    )


def recommendations(
    scenarios: dict[str, Scenario], measured: list[Measured], usable_node_mib: float
) -> list[dict[str, Any]]:
    return [asdict(recommend(name, s, measured, usable_node_mib)) for name, s in scenarios.items()]
