"""The demo's result tables, built from the measured data only (the dict written to report.json).

One builder per table; the console (after each phase), report.md and report.html all render these
same sections, so a figure cannot differ between them or appear in one and not the others.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Section:
    title: str
    header: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def agents(data: dict[str, Any]) -> Section:
    init = data["init"]
    return Section(
        "Agents and their sandbox backend",
        ["node", "backend", "why (agent's probe, from its Lease)", "start s", "base RSS MiB"],
        [[a["node"], a["backend"], a["backend_reason"], a["start_s"], a["base_rss_mib"]] for a in init["agents"]],
        [
            f"cluster: {init['cluster']}, namespace {init['namespace']}, TarsNode {init['tarsnode']} "
            f"(status backend: {init['tarsnode_backend'] or '-'}); "
            f"operator started in {init['operator_start_s']:.1f} s"
        ],
    )


MODEL_HEADER = ["model", "kind", "replicas", "apply->loaded ms (per agent)", "apply->Ready s"]
MODEL_HEADER += ["RSS/replica MiB", "declared MiB"]
LATENCY_HEADER = ["model", "requests sent", "errors", "concurrency", "replicas", "p50 ms", "p95 ms", "p99 ms"]
LATENCY_HEADER += ["req/s", "seed p50 ms", "seed p99 ms", "seed req/s"]
COST_HEADER = ["model", "RSS MiB", "req/s", "TARS models/node", "TARS per model-hour", "TARS per M requests"]
COST_HEADER += ["baseline models/node", "baseline per model-hour", "baseline per M requests"]
COST_HEADER += ["x cheaper per model-hour"]


def models(data: dict[str, Any]) -> Section:
    load = data["load"]
    synth = load["synthetic_checkpoints"]
    return Section(
        "Models: apply to Ready",
        MODEL_HEADER,
        [
            [
                r["model"],
                r["kind"],
                r["replicas"],
                ", ".join(f"{v:.0f}" for v in r["apply_to_loaded_ms"].values()) or "-",
                r["apply_to_ready_s"],
                r["rss_per_replica_mib"],
                r["declared_mib"],
            ]
            for r in load["models"] + load["functions"]
        ],
        [
            "synthetic weights (random, not trained; timing and memory are real): "
            + (", ".join(f"{k} ({v['preset']}, {v['size_mib']:.0f} MiB)" for k, v in synth.items()) or "none"),
            "each model is applied alone, so its memory is attributable; functions are applied together, "
            "so theirs is not attributed one by one",
        ],
    )


def latency(data: dict[str, Any]) -> Section:
    rows = []
    for b in data["benchmark"]:
        s, seed = b["summary"], b["seed"] or {}
        measured = [s["p50_ms"], s["p95_ms"], s["p99_ms"], s["rps"]]
        claimed = [seed.get("p50_ms"), seed.get("p99_ms"), seed.get("rps")]
        rows.append([b["model"], b["requests_sent"], s["errors"], b["concurrency"], b["replicas"], *measured, *claimed])
    return Section(
        "Latency and throughput through the gateway",
        LATENCY_HEADER,
        rows,
        ["seed columns are the seed project's claims (from the plan), not measured here"],
    )


def sandbox_starts(data: dict[str, Any]) -> Section:
    starts = data.get("sandbox_start") or {}
    return Section(
        "Sandbox starts (agents' tars_agent_sandbox_start_seconds)",
        ["model", "sandboxes started", "mean ms"],
        [[m, int(s["count"]), s["mean_ms"]] for m, s in sorted(starts.items())],
    )


def security(data: dict[str, Any]) -> Section | None:
    sec = data.get("security")
    if not sec:
        return None
    return Section(
        f"Security: hostile function {sec['hostile_model']}",
        ["attempt", "what", "blocked", "evidence"],
        [
            [a["name"], a["attack"], "yes" if a["blocked"] else "NO", json.dumps(a["evidence"])[:300]]
            for a in sec["attempts"]
        ],
        [
            f"score: {sec['blocked']}/{sec['attempted']} blocked = {sec['score']:.0%} "
            f"(granted to the hostile function: {', '.join(sec['granted_capabilities']) or 'nothing'})"
        ],
    )


def cost(data: dict[str, Any]) -> Section:
    rows = []
    for r in data["cost"]["rows"]:
        tars = [r["tars_models_per_node"], f"{r['tars_per_model_hour']:.5f}", fmt(r["tars_per_million_requests"], 4)]
        baseline = [r["baseline_models_per_node"], f"{r['baseline_per_model_hour']:.5f}"]
        baseline.append(fmt(r["baseline_per_million_requests"], 4))
        rows.append([r["model"], r["rss_mib"], r["rps"], *tars, *baseline, r["saving_per_model_hour"]])
    return Section(
        "Cost",
        COST_HEADER,
        rows,
        [f"assumption: {a}" for a in data["cost"]["assumptions"]],
    )


def recommendations(data: dict[str, Any]) -> Section:
    return Section(
        "Deployment recommendations",
        ["scenario", "model", "meets budget", "replicas", "nodes", "why", "rule"],
        [
            [r["scenario"], r["model"] or "-", _yes(r["meets_budget"]), r["replicas"], r["nodes"], r["why"], r["rule"]]
            for r in data["recommendations"]
        ],
    )


def _yes(value: bool) -> str:
    return "yes" if value else "no"


# What each phase measured, shown as soon as the phase ends; the report shows them all, in order.
BY_PHASE: dict[str, list[Callable[[dict[str, Any]], Section | None]]] = {
    "init": [agents],
    "load": [models],
    "benchmark": [latency, sandbox_starts],
    "security": [security],
    "cost": [cost, recommendations],
}


def for_phase(phase: str, data: dict[str, Any]) -> list[Section]:
    return [s for build in BY_PHASE[phase] if (s := build(data)) is not None]


def sections(data: dict[str, Any]) -> list[Section]:
    return [s for phase in BY_PHASE for s in for_phase(phase, data)]
