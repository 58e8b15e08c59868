"""`tarsctl demo` end to end on the real local control plane, with a tiny plan, then security-check
with one protection deliberately switched off.

The demo runs in-process against the session's control plane and two of its simulated nodes, in a
fresh namespace; it is kept (keep=True) so the second test can attack the same system, and the
fixture cleans up after both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tarsctl.demo import security, tables
from tarsctl.demo.phases import Demo, Options
from tarsctl.demo.plan import load_plan
from tests.demo import browser
from tests.fixtures import ControlPlane

TINY_PLAN = Path(__file__).resolve().parent / "tiny_plan.yaml"


@dataclass
class DemoRun:
    demo: Demo
    data: dict[str, Any]
    report_dir: Path
    seconds: float


@pytest.fixture(scope="module")
def demo_run(
    control_plane: ControlPlane, simulated_nodes: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoRun]:
    workdir = tmp_path_factory.mktemp("demo")
    report_dir = workdir / "report"
    namespace = f"demo-{int(time.time())}"
    options = Options(
        plan=load_plan(TINY_PLAN),
        report_dir=report_dir,
        keep=True,
        namespace=namespace,
        nodes=list(simulated_nodes[:2]),
        workdir=workdir,
    )
    demo = Demo(options, Console(width=200, record=True))
    started = time.monotonic()
    try:
        data = demo.execute()
        yield DemoRun(demo, data, report_dir, time.monotonic() - started)
    finally:
        for process in demo.fleet.processes.values() if demo.fleet else []:
            print(process.name, process.log_tail(1500))
        demo.cleanup()


def test_demo_writes_a_report_of_what_it_measured(demo_run: DemoRun) -> None:
    files = {p.name for p in demo_run.report_dir.iterdir()}
    assert {"report.md", "report.json", "report.html"} <= files
    saved = json.loads((demo_run.report_dir / "report.json").read_text())
    assert set(saved) >= {"init", "load", "benchmark", "security", "cost", "recommendations", "meta"}

    # Every agent reports its backend and why (on these machines: Wasmtime, no hardware KVM).
    assert len(saved["init"]["agents"]) == 2
    for agent in saved["init"]["agents"]:
        assert agent["backend"] in {"wasmtime", "hyperlight"} and agent["backend_reason"]

    # The models the tiny plan deploys were applied and became Ready; edge-tiny's weights are synthetic.
    loaded = {r["model"]: r for r in saved["load"]["models"] + saved["load"]["functions"]}
    assert set(loaded) == {"sentiment", "edge-tiny", "self-healing"}
    assert all(r["apply_to_ready_s"] > 0 for r in loaded.values())
    assert saved["load"]["synthetic_checkpoints"]["edge-tiny"]["synthetic"] is True

    # Request counts are what the load generator sent, and the latencies are its own measurements.
    plan = load_plan(TINY_PLAN)
    for case, result in zip(plan.benchmark, saved["benchmark"], strict=True):
        assert result["model"] == case.model
        assert result["requests_sent"] == case.requests == len(result["latencies_ms"])
        assert result["summary"]["requests"] == case.requests
        assert sum(result["statuses"].values()) == case.requests
        assert result["summary"]["ok"] == result["statuses"].get("200", 0) > 0
        # One request at a time, then the plan's concurrency, then saturation from there upwards.
        assert result["single_user"]["requests"] == case.single_user_requests
        assert result["single_user"]["ok"] > 0
        steps = result["saturation"]["steps"]
        assert steps[0]["concurrency"] == case.concurrency and all(s["requests"] > 0 for s in steps)
        assert result["saturation"]["rps"] == max(s["rps"] for s in steps) > 0
        # The original's claims, labelled as its own, beside (never instead of) ours.
        assert result["claim"]["name"] == case.claim and "claim" in result["claim"]["source"]
    sandbox_starts = saved["sandbox_start"]["sentiment"]["count"]
    assert sandbox_starts >= plan.benchmark[0].requests  # a fresh sandbox per request

    # The baseline ran each benchmarked model alone in its own agent process and measured it.
    alone = {r["model"]: r for r in saved["baseline"]}
    assert set(alone) == {c.model for c in plan.benchmark}
    for row in alone.values():
        assert row["rss_mib"] > 0 and row["saturation"]["rps"] > 0 and row["single_user"]["ok"] > 0

    # Cost rows are derived from the measured RSS and throughput, not from the plan.
    rows = {r["model"]: r for r in saved["cost"]["rows"]}
    bench = {r["model"]: r for r in saved["benchmark"]}
    for name, row in rows.items():
        assert row["rps"] == pytest.approx(bench[name]["saturation"]["rps"])
        assert row["rss_mib"] == pytest.approx(loaded[name]["rss_per_replica_mib"])
        assert row["baseline_rss_mib"] == pytest.approx(alone[name]["rss_mib"])
        assert row["baseline_rps"] == pytest.approx(alone[name]["saturation"]["rps"])
    # Recommendations are for the nodes the agents run on, read from their Node objects.
    recs = saved["recommendations"]
    assert {r["scenario"] for r in recs["rows"]} == set(plan.scenarios)
    assert recs["node_shape"]["count"] == 2 and recs["node_shape"]["vcpus"] > 0
    for rec in recs["rows"]:
        assert rec["model"] is None or rec["nodes"] >= 1

    # The security phase ran every attempt; nothing was granted, so exfiltration was blocked.
    sec = saved["security"]
    attempts = {a["name"]: a for a in sec["attempts"]}
    assert sec["attempted"] == len(attempts) >= 10
    assert sec["score"] == pytest.approx(sec["blocked"] / sec["attempted"])
    for name in (
        "host-file-read",
        "socket",
        "memory-limit",
        "infinite-loop",
        "output-flood",
        "exfiltrate-log.write",
        "exfiltrate-knowledge.query",
    ):
        assert attempts[name]["blocked"], attempts[name]
    assert attempts["exfiltrate-log.write"]["evidence"]["host_calls_denied_delta"] >= 1

    md = (demo_run.report_dir / "report.md").read_text()
    assert "synthetic" in md and "Beside the original's claims" in md and "Sentiment Analysis" in md
    assert demo_run.data["benchmark"][0]["requests_sent"] == plan.benchmark[0].requests
    # A hang guard, not a timing assertion: the security phase builds a probe function with
    # componentize-py and the baseline starts an agent per model (minutes on two busy cores).
    assert demo_run.seconds < 1200, f"the tiny demo took {demo_run.seconds:.0f}s"


def test_security_check_reports_a_disabled_protection(demo_run: DemoRun) -> None:
    demo = demo_run.demo
    assert demo.state is not None
    target = security.Target(demo.state, demo.namespace, demo.tarsnode, demo.gateway, demo._agent_logs())
    # The protection switched off: the hostile function is granted log.write, the channel it exfiltrates by.
    check = security.SecurityCheck(
        target, demo.plan.security, granted=["log.write"], workdir=demo.workdir, hostile_name="tars-hostile-granted"
    )
    check.deploy(timeout=120)
    try:
        result = check.run([step for step in check.steps() if step[0].startswith("exfiltration")])
    finally:
        check.cleanup()
    attempts = {a.name: a for a in result.attempts}
    leaked = attempts["exfiltrate-log.write"]
    assert not leaked.blocked, leaked
    assert leaked.evidence["secret_in_agent_logs"] is True
    assert attempts["exfiltrate-knowledge.query"].blocked  # still not granted
    assert result.score < 1.0
    assert result.score == sum(a.blocked for a in result.attempts) / len(result.attempts)


def test_the_demos_report_renders_in_a_real_browser(demo_run: DemoRun, tmp_path: Path) -> None:
    page = browser.render(demo_run.report_dir / "report.html", tmp_path)
    saved = json.loads((demo_run.report_dir / "report.json").read_text())
    assert page.dom.count("<table>") == len(tables.sections(saved))
    assert page.dom.count('src="data:image/png;base64,') == 4
    assert "Beside the original's claims" in page.dom and "Deployment recommendations" in page.dom
    # The plots were decoded and drawn: their bars' colours are on screen.
    assert page.pixels_near(browser.GREEN) > 500 and page.pixels_near(browser.BLUE) > 500
    assert page.pixels_near(browser.GRAY) > 100 and page.distinct_colours() > 50
