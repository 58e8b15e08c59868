"""The demo's result tables, built from the measured data only (the dict written to report.json).

One builder per table; the console (after each phase), report.md and report.html all render these
same sections, so a figure cannot differ between them or appear in one and not the others.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tarsctl.demo import claims


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
LATENCY_HEADER = ["model", "replicas", "1 user p50 ms", "1 user p95 ms", "concurrency", "requests", "errors"]
LATENCY_HEADER += ["p50 ms", "p95 ms", "p99 ms", "req/s", "saturated req/s", "at concurrency"]
CLAIMS_HEADER = ["model", "original's row", "claimed ms", "our 1 user p50 ms", "ratio"]
CLAIMS_HEADER += ["claimed req/s", "our saturated req/s", "ratio", "claimed MB", "our RSS/replica MiB", "ratio"]
BASELINE_HEADER = ["model", "alone: ready s", "alone: RSS MiB", "alone: 1 user p50 ms", "alone: saturated req/s"]
BASELINE_HEADER += ["TARS: RSS/replica MiB", "TARS: saturated req/s"]
COST_HEADER = ["model", "RSS MiB", "req/s", "TARS models/node", "TARS per model-hour", "TARS per M requests"]
COST_HEADER += ["baseline RSS MiB", "baseline req/s", "baseline models/node", "baseline per model-hour"]
COST_HEADER += ["baseline per M requests", "x cheaper per model-hour"]


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
        one, s, sat = b["single_user"], b["summary"], b["saturation"]
        rows.append(
            [
                *[b["model"], b["replicas"], one["p50_ms"], one["p95_ms"], b["concurrency"], b["requests_sent"]],
                *[s["errors"], s["p50_ms"], s["p95_ms"], s["p99_ms"], s["rps"], sat["rps"], sat["concurrency"]],
            ]
        )
    return Section(
        "Latency and throughput through the gateway (measured)",
        LATENCY_HEADER,
        rows,
        [
            "1 user: one request at a time; then the plan's concurrency; saturated: concurrency doubled from "
            "the plan's while req/s still grew (time-bounded steps), the best step shown",
            f"measured on {data['meta']['machine_vcpus']} vCPUs shared by the agents, the gateway and the load "
            "generator",
        ],
    )


def _ratio(ours: float | None, claimed: float | None) -> str | None:
    if ours is None or claimed is None or claimed == 0 or math.isnan(ours):
        return None
    return f"{ours / claimed:.2f}x"


def versus_claims(data: dict[str, Any]) -> Section | None:
    """Our measurements beside the original's published claims, with ours / claimed."""
    memory = {r["model"]: r["rss_per_replica_mib"] for r in data["load"]["models"]}
    rows = []
    for b in data["benchmark"]:
        c = b.get("claim")
        if not c:
            continue
        p50, rps, rss = b["single_user"]["p50_ms"], b["saturation"]["rps"], memory.get(b["model"])
        rows.append(
            [
                *[b["model"], c["name"], c["latency_ms"], p50, _ratio(p50, c["latency_ms"]), c["rps"], rps],
                *[_ratio(rps, c["rps"]), c["memory_mb"], rss, _ratio(rss, c["memory_mb"])],
            ]
        )
    if not rows:
        return None
    loaded = [v for r in data["load"]["models"] for v in r["apply_to_loaded_ms"].values()]
    best = max(data["benchmark"], key=lambda b: b["saturation"]["rps"])
    notes = [
        "claimed columns are the original TARS project's published claims (original_claims.md), not measured "
        "here and used in no calculation; ratio = ours / claimed (below 1 is lower latency or memory, above 1 "
        "is more req/s)",
        f"the original claimed its 5 models loaded in {claims.AVERAGE_LOAD_MS:.0f} ms on average; ours, apply to "
        f"loaded on an agent: {statistics.mean(loaded):.0f} ms on average"
        if loaded
        else "",
        f"the original claimed {claims.NODE_RPS:,.0f}+ req/s per node; our most for one model: "
        f"{best['saturation']['rps']:.0f} req/s ({best['model']}) on {data['meta']['machine_vcpus']} vCPUs",
    ]
    return Section("Beside the original's claims", CLAIMS_HEADER, rows, [n for n in notes if n])


def baseline(data: dict[str, Any]) -> Section | None:
    if not data.get("baseline"):
        return None
    bench = {b["model"]: b for b in data["benchmark"]}
    memory = {r["model"]: r["rss_per_replica_mib"] for r in data["load"]["models"]}
    rows = [
        [
            *[r["model"], r["ready_s"], r["rss_mib"], r["single_user"]["p50_ms"], r["saturation"]["rps"]],
            *[memory.get(r["model"]), bench[r["model"]]["saturation"]["rps"]],
        ]
        for r in data["baseline"]
    ]
    return Section(
        "One container per model (measured: each model alone in its own agent process)",
        BASELINE_HEADER,
        rows,
        [
            "alone: a standalone agent holding only that model, driven directly (no gateway), one after another; "
            "its RSS is the whole process (runtime and model), what a container per model pays",
            "a model that calls other models through host capabilities (tars-reasoning's optional nn.generate) "
            "finds none loaded when alone and skips that step, so alone it does less work per request",
        ],
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
        baseline = [r["baseline_rss_mib"], r["baseline_rps"], r["baseline_models_per_node"]]
        baseline.append(f"{r['baseline_per_model_hour']:.5f}")
        baseline.append(fmt(r["baseline_per_million_requests"], 4))
        rows.append([r["model"], r["rss_mib"], r["rps"], *tars, *baseline, r["saving_per_model_hour"]])
    return Section(
        "Cost",
        COST_HEADER,
        rows,
        [f"assumption: {a}" for a in data["cost"]["assumptions"]],
    )


def recommendations(data: dict[str, Any]) -> Section:
    recs = data["recommendations"]
    return Section(
        "Deployment recommendations",
        ["scenario", "model", "meets budget", "replicas", "nodes", "why", "rule"],
        [
            [r["scenario"], r["model"] or "-", _yes(r["meets_budget"]), r["replicas"], r["nodes"], r["why"], r["rule"]]
            for r in recs["rows"]
        ],
        [
            f"for nodes of {recs['nodes']} (read from the Node objects the agents run on and the TarsNode's "
            "agent.modelMemoryMiB; the smallest when they differ)"
        ],
    )


def _yes(value: bool) -> str:
    return "yes" if value else "no"


# What each phase measured, shown as soon as the phase ends; the report shows them all, in order.
BY_PHASE: dict[str, list[Callable[[dict[str, Any]], Section | None]]] = {
    "init": [agents],
    "load": [models],
    "benchmark": [latency, versus_claims, sandbox_starts],
    "security": [security],
    "baseline": [baseline],
    "cost": [cost, recommendations],
}


def for_phase(phase: str, data: dict[str, Any]) -> list[Section]:
    return [s for build in BY_PHASE[phase] if (s := build(data)) is not None]


def sections(data: dict[str, Any]) -> list[Section]:
    return [s for phase in BY_PHASE for s in for_phase(phase, data)]
