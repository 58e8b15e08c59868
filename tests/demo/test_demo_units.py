"""The demo's pure parts: plan parsing, statistics, cost, recommendations, security verdicts, report."""

from __future__ import annotations

import http.server
import json
import math
import threading
from pathlib import Path

import pytest

from tarsctl.demo import claims, cost, measure, recommend, report, security, tables
from tarsctl.demo.plan import DEFAULT_PLAN, CostPlan, PlanError, SaturationPlan, Scenario, load_plan, parse_plan
from tarsctl.demo.stats import next_concurrency, percentile, ratio, summarize
from tests.demo import browser

HERE = Path(__file__).resolve().parent

MINIMAL = {
    "tarsnode": "tarsnode.yaml",
    "manifests": ["models.yaml"],
    "cost": {"nodePricePerHour": 1.0, "nodeMemoryMib": 1024, "nodeVcpus": 2},
}


def test_shipped_plans_parse_with_paths_resolved() -> None:
    for path in (DEFAULT_PLAN, HERE / "tiny_plan.yaml"):
        plan = load_plan(path)
        assert plan.tarsnode.is_file()
        assert all(m.is_file() for m in plan.manifests)
    plan = load_plan(DEFAULT_PLAN)
    # Every model of the original's table is benchmarked beside its claim.
    assert {c.claim for c in plan.benchmark} == set(claims.MODELS)
    assert next(c.claim for c in plan.benchmark if c.model == "sentiment") == "Sentiment Analysis"


def test_claims_match_the_original_claims_file() -> None:
    parsed = claims.parse_table(claims.SOURCE.read_text())
    assert parsed == list(claims.MODELS.values())
    assert claims.MODELS["GPT-2 Small"].latency_ms == 75 and claims.MODELS["GPT-2 Small"].rps == 28
    text = claims.SOURCE.read_text()
    assert f"{claims.AVERAGE_LOAD_MS:.0f} ms average load time" in text
    assert f"{claims.TOTAL_MEMORY_MB:,.0f} MB total" in text and f"{claims.NODE_RPS:,.0f}+ RPS per node" in text
    with pytest.raises(PlanError, match="claimed nothing for 'GPT-3'"):
        parse_plan(
            {**MINIMAL, "benchmark": [{"model": "m", "body": {}, "requests": 1, "concurrency": 1, "claim": "GPT-3"}]},
            Path("."),
        )


def test_saturation_search_doubles_until_throughput_stops_growing() -> None:
    assert next_concurrency([(4, 100.0, 0)], limit=32, min_gain=0.1) == 8
    assert next_concurrency([(4, 100.0, 0), (8, 150.0, 0)], limit=32, min_gain=0.1) == 16
    assert next_concurrency([(4, 100.0, 0), (8, 105.0, 0)], limit=32, min_gain=0.1) is None  # < 10 % more
    assert next_concurrency([(4, 100.0, 0), (8, 150.0, 3)], limit=32, min_gain=0.1) is None  # errors: saturated
    assert next_concurrency([(16, 100.0, 0), (32, 300.0, 0)], limit=32, min_gain=0.1) is None  # at the limit
    assert next_concurrency([(24, 100.0, 0)], limit=32, min_gain=0.1) == 32
    with pytest.raises(ValueError):
        next_concurrency([], limit=32, min_gain=0.1)


def test_plan_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"benchmark\.0\.concurrency"):
        parse_plan({**MINIMAL, "benchmark": [{"model": "m", "body": {}, "requests": 1, "concurrency": 0}]}, tmp_path)
    with pytest.raises(PlanError, match=r"nodePricePerHour|node_price_per_hour"):
        parse_plan({**MINIMAL, "cost": {"nodeMemoryMib": 1, "nodeVcpus": 1}}, tmp_path)
    with pytest.raises(PlanError, match="typo"):
        parse_plan({**MINIMAL, "typo": 1}, tmp_path)
    with pytest.raises(PlanError, match="does not deploy: ghost"):
        parse_plan(
            {
                **MINIMAL,
                "models": ["a"],
                "benchmark": [{"model": "ghost", "body": {}, "requests": 1, "concurrency": 1}],
            },
            tmp_path,
        )
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(tmp_path / "missing.yaml")


def test_relative_paths_resolve_against_the_plan_folder(tmp_path: Path) -> None:
    plan = parse_plan(MINIMAL, tmp_path)
    assert plan.tarsnode == tmp_path / "tarsnode.yaml"
    assert plan.manifests == [tmp_path / "models.yaml"]


def test_percentile_interpolates_like_numpy() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 5.0
    assert percentile(values, 95) == pytest.approx(4.8)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_counts_every_request_but_times_only_successes() -> None:
    s = summarize([10.0, 20.0, 1.0, 30.0], [200, 200, 500, 200], wall_s=2.0)
    assert (s.requests, s.ok, s.errors) == (4, 3, 1)
    assert s.p50_ms == 20.0 and s.rps == 1.5
    failed = summarize([1.0], [0], wall_s=1.0)
    assert failed.ok == 0 and math.isnan(failed.p50_ms)
    assert ratio(2.0, 0.0) == math.inf and ratio(0.0, 0.0) == 1.0


def test_cost_density_and_baseline() -> None:
    plan = CostPlan(node_price_per_hour=1.0, node_memory_mib=1124, node_vcpus=4, container_cpu_request=0.5)
    inputs = cost.CostInputs(agent_base_rss_mib=100.0, machine_vcpus=2)
    alone = cost.Baseline(rss_mib=110.0, rps=160.0)  # measured: the model alone in its own process
    c = cost.model_cost("m", rss_mib=10.0, rps=200.0, baseline=alone, plan=plan, inputs=inputs)
    assert c.tars_models_per_node == 102  # (1124 - 100) / 10
    assert c.tars_per_model_hour == pytest.approx(10 / 1024)
    # A container holds the measured 110 MiB process: 10 fit by memory, 8 by CPU requests.
    assert c.baseline_models_per_node == 8 and c.baseline_rss_mib == 110.0
    assert c.baseline_per_model_hour == pytest.approx(1 / 8)
    # 100 req/s per vCPU x 4 vCPUs x 3600 s per node-hour.
    assert c.tars_per_million_requests == pytest.approx(1e6 / (100 * 4 * 3600))
    # The baseline's own measured 80 req/s per vCPU, on the 8 x 0.5 vCPU its containers reserve.
    assert c.baseline_per_million_requests == pytest.approx(1e6 / (80 * 4 * 3600))
    assert c.saving_per_model_hour == pytest.approx((1 / 8) / (10 / 1024))
    table = cost.cost_table({"m": (10.0, 200.0, alone)}, plan, inputs)
    assert table["rows"][0]["model"] == "m" and len(table["assumptions"]) >= 4
    with pytest.raises(ValueError):
        cost.model_cost("m", 1, 1, alone, CostPlan(node_price_per_hour=1, node_memory_mib=50, node_vcpus=1), inputs)


def _node(name: str, cpu: str, memory: str) -> dict[str, object]:
    return {"metadata": {"name": name}, "status": {"allocatable": {"cpu": cpu, "memory": memory}}}


def test_node_shape_is_the_smallest_node_with_the_agents_model_memory() -> None:
    nodes = [_node("big", "16", "64Gi"), _node("small", "2", "8Gi"), _node("milli", "2500m", "8Gi")]
    shape = recommend.node_shape(nodes, model_memory_mib=4096, agent_base_mib=150)
    assert (shape.example, shape.vcpus, shape.memory_mib, shape.count) == ("small", 2.0, 8192.0, 3)
    assert shape.model_memory_mib == 4096  # the TarsNode's cap, below 8192 - 150
    tight = recommend.node_shape([_node("n", "2", "1Gi")], model_memory_mib=None, agent_base_mib=200)
    assert tight.model_memory_mib == 1024 - 200 and "2 vCPU" in tight.describe()
    with pytest.raises(ValueError):
        recommend.node_shape([], None, 0)


def test_recommendations_respect_the_nodes_cpu_and_memory() -> None:
    def measured(name: str, kind: str, p95: float, rps: float, rss: float) -> recommend.Measured:
        return recommend.Measured(name, kind, p95, p95 / 2, saturated_rps=rps, measured_vcpus=2, rss_mib=rss)

    models = [
        measured("tiny", "text-generation", 50, 100, 30),
        measured("big", "text-generation", 400, 10, 400),
        measured("sent", "sentiment", 20, 300, 12),
        measured("huge", "embedding", 10, 1000, 5000),
    ]
    two_vcpu = recommend.NodeShape("n1", vcpus=2, memory_mib=8192, model_memory_mib=4096, count=1)
    edge = recommend.recommend(
        "edge",
        Scenario(model_kinds=["text-generation"], p95_budget_ms=500, target_rps=120, prefer="smallest"),
        models,
        two_vcpu,
    )
    # 100 req/s over 2 vCPUs = 50 per vCPU; a 2-vCPU node serves 100; 120 req/s needs 2 nodes, not
    # 2 replicas stacked on the one node (they would share its 2 vCPUs).
    assert (edge.model, edge.meets_budget, edge.nodes, edge.replicas) == ("tiny", True, 2, 2)
    assert "the cluster has 1" in edge.why
    wide = recommend.recommend(
        "edge",
        Scenario(model_kinds=["text-generation"], p95_budget_ms=500, target_rps=120, prefer="smallest"),
        models,
        recommend.NodeShape("n1", vcpus=8, memory_mib=32768, model_memory_mib=4096, count=4),
    )
    assert wide.nodes == 1 and "the cluster has" not in wide.why  # 8 vCPU x 50 = 400 req/s per node
    strict = recommend.recommend(
        "chat", Scenario(model_kinds=["text-generation"], p95_budget_ms=10, target_rps=1), models, two_vcpu
    )
    assert strict.model == "tiny" and not strict.meets_budget and "no candidate fits" in strict.why
    # 5000 MiB does not fit 4096 MiB of model memory: not recommended, whatever its speed.
    none = recommend.recommend(
        "search", Scenario(model_kinds=["embedding"], p95_budget_ms=100, target_rps=1), models, two_vcpu
    )
    assert none.model is None and none.nodes == 0
    many = recommend.recommend(
        "analytics", Scenario(model_kinds=["sentiment"], p95_budget_ms=100, target_rps=15000), models, two_vcpu
    )
    assert many.nodes == 50 and many.replicas == 50  # 150 req/s per vCPU x 2 = 300 per node


def test_security_verdicts() -> None:
    assert security.file_read_blocked(200, {"attempts": [{"blocked": True}]}, "s3cret")
    assert not security.file_read_blocked(200, {"attempts": [{"blocked": False, "value": "s3cret"}]}, "s3cret")
    assert not security.socket_blocked(200, {"attempts": [{"blocked": True}]}, connections_seen=1)
    assert security.memory_blocked(200, {"allocated_mib": 50}, 256, True)
    assert not security.memory_blocked(200, {"allocated_mib": 256}, 256, True)
    assert security.memory_blocked(500, {"reason": "memory"}, 256, True)
    assert security.stopped_with(500, {"reason": "timeout"}, "timeout", True)
    assert not security.stopped_with(500, {"reason": "timeout"}, "timeout", False)
    assert security.input_rejected(413, True) and not security.input_rejected(500, True)
    assert security.injection_contained(200, {"nn.embed"}, {"nn.embed", "clock.now"}, True)
    assert not security.injection_contained(200, {"log.write"}, {"nn.embed"}, True)
    assert security.neighbour_unaffected(5.0, 10.0, 0, 3.0)
    assert not security.neighbour_unaffected(5.0, 20.0, 0, 3.0)
    assert not security.neighbour_unaffected(5.0, 5.0, 1, 3.0)
    assert security.exfiltration_blocked(200, {"blocked": True}, 1, False)
    assert not security.exfiltration_blocked(200, {"blocked": False, "value": {"logged": 3}}, 0, True)
    attempts = [security.Attempt("a", "x", True), security.Attempt("b", "y", False)]
    assert security.security_score(attempts) == 0.5
    with pytest.raises(ValueError):
        security.security_score([])


def test_platform_verdicts() -> None:
    assert security.api_refused(True) and not security.api_refused(False)
    # file:// outside the roots: refused by the API, or by the agent without echoing the file.
    assert security.escape_blocked(True, False, False, False)
    assert security.escape_blocked(False, False, True, False)
    assert not security.escape_blocked(False, True, False, False)  # loaded: escaped
    assert not security.escape_blocked(False, False, True, True)  # refused, but the content came back
    assert not security.escape_blocked(False, False, False, False)  # no verdict from the agent at all
    assert security.build_write_blocked([])
    assert not security.build_write_blocked(["/host/site-packages/tars-build-probe-x.txt"])
    assert security.blocking_contained([500, 500, 429], 12.0, 120.0, [200] * 5, True)
    assert security.blocking_contained([200] * 3, 0.4, 120.0, [200] * 5, True)  # woken at once by the host
    assert not security.blocking_contained([500, 200], 121.0, 120.0, [200] * 5, True)  # one slept it out
    assert not security.blocking_contained([500, 0], 150.0, 120.0, [200] * 5, True)  # one was never stopped
    assert not security.blocking_contained([500, 500], 12.0, 120.0, [200, 0, 0, 0, 0], True)  # agents wedged


def test_probe_functions_pass_the_agents_checks() -> None:
    from tars_api import TarsModel
    from tars_api.functions import check_python
    from tarsctl.demo.security.hostile import BUILD_PROBE_CODE, probe_model

    code = BUILD_PROBE_CODE.replace("{token}", "abc")
    check_python(code)
    TarsModel.model_validate(probe_model("p", "tars", code=code))
    assert TarsModel.model_validate(probe_model("p", "tars", source="file:///tmp/x/stolen.py")).spec.kind == "function"
    assert TarsModel.model_validate(probe_model("p", "tars", source="builtin://sentiment-vader")).spec.kind == (
        "sentiment"
    )


def test_hostile_model_is_a_valid_tarsmodel() -> None:
    from tars_api import TarsModel
    from tarsctl.demo.plan import SecurityPlan

    doc = security.hostile_model("h", "tars", 2, ["log.write"], SecurityPlan())
    model = TarsModel.model_validate(doc)
    assert model.spec.function is not None and "def handle(input)" in model.spec.function.code
    compile(model.spec.function.code, "hostile", "exec")


def _bench(model: str, latencies: list[float], claim: str | None) -> dict[str, object]:
    summary = summarize(latencies, [200] * len(latencies), 1.0).to_json()
    found = claims.claim(claim)
    return {
        "model": model,
        "requests_sent": len(latencies),
        "concurrency": 2,
        "replicas": 1,
        "latencies_ms": latencies,
        "single_user": summary,
        "summary": summary,
        "saturation": {"rps": 40.0 * len(model), "concurrency": 4, "p95_ms": 9.0, "steps": []},
        "claim": found.to_json() if found else None,
    }


def _load(model: str, rss: float) -> dict[str, object]:
    return {
        "model": model,
        "kind": "sentiment",
        "replicas": 1,
        "apply_to_loaded_ms": {"n1": 200.0},
        "apply_to_ready_s": 0.5,
        "rss_per_replica_mib": rss,
        "declared_mib": 32,
    }


def sample_data() -> dict[str, object]:
    """A report's data in the shape the demo writes (a NaN where a measurement could not attribute)."""
    return {
        "init": {
            "cluster": "local",
            "namespace": "ns",
            "tarsnode": "tars",
            "tarsnode_backend": "wasmtime",
            "operator_start_s": 1.0,
            "agents": [
                {"node": "n1", "backend": "wasmtime", "backend_reason": "no vmx", "start_s": 1.0, "base_rss_mib": 100.0}
            ],
        },
        "load": {
            "synthetic_checkpoints": {"edge-tiny": {"preset": "edge-tiny", "size_mib": 3.0}},
            "models": [_load("m", float("nan")), _load("sentiment", 12.0)],
            "functions": [],
        },
        "benchmark": [
            _bench("m", [1.0, 2.0, 3.0], None),
            _bench("sentiment", [4.0, 5.0, 6.0, 30.0], "Sentiment Analysis"),
        ],
        "sandbox_start": {
            "m": {"count": 2.0, "sum_s": 0.004, "buckets": {"0.001": 0.0, "0.005": 2.0, "+Inf": 2.0}, "mean_ms": 2.0}
        },
        "security": None,
        "baseline": [
            {
                "model": "sentiment",
                "ready_s": 3.0,
                "rss_mib": 140.0,
                "single_user": summarize([4.0], [200], 1.0).to_json(),
                "saturation": {"rps": 250.0, "concurrency": 8, "p95_ms": 20.0, "steps": []},
            }
        ],
        "cost": {"rows": [], "assumptions": ["a"]},
        "recommendations": {"nodes": "2 vCPU / 7.6 GiB", "node_shape": {}, "rows": []},
        "total_s": 10.0,
        "meta": {"finished_at": "now", "machine_vcpus": 2},
    }


def test_report_renders_from_data_only(tmp_path: Path) -> None:
    out = report.write(tmp_path, sample_data())
    saved = json.loads((out / "report.json").read_text())
    assert saved["load"]["models"][0]["rss_per_replica_mib"] is None  # NaN is not JSON
    md = (out / "report.md").read_text()
    assert "| m | 1 | 2.0 | 2.9 | 2 | 3 | 0 |" in md
    # sentiment's 5.5 ms single-user p50 beside the original's claimed 12 ms, and so on, with ours / claimed.
    assert "| sentiment | Sentiment Analysis | 12 | 5.5 | 0.46x | 165 | 360.0 | 2.18x | 128 | 12.0 | 0.09x |" in md
    assert "original TARS project's published claims" in md
    assert "| sentiment | 3.0 | 140.0 | 4.0 | 250.0 | 12.0 | 360.0 |" in md  # the measured baseline
    assert "<table>" in (out / "report.html").read_text()


def test_report_renders_in_a_real_browser(tmp_path: Path) -> None:
    out = report.write(tmp_path / "report", sample_data())
    page = browser.render(out / "report.html", tmp_path)
    # chromium parsed every table and every plot the report holds.
    assert page.dom.count("<table>") == len(tables.sections(json.loads((out / "report.json").read_text())))
    assert page.dom.count('src="data:image/png;base64,') == 4  # latency, throughput, memory, sandbox starts
    assert "Beside the original's claims" in page.dom and "One container per model" in page.dom
    # The plots were decoded and drawn: their bars' colours are on screen (a broken image draws none).
    assert page.pixels_near(browser.GREEN) > 500  # TARS saturated throughput
    assert page.pixels_near(browser.BLUE) > 500  # alone in its own agent, and memory
    assert page.pixels_near(browser.GRAY) > 200  # the original's claim
    assert page.distinct_colours() > 50  # text, borders and plots, not a blank page


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_saturation_steps_are_time_bounded_runs_of_the_load_generator() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v2/models/m/infer"
        # A million requests are allowed; the step's duration ends it (its deadline must not overflow).
        found = measure.saturate(url, {"x": 1}, start=1, plan=SaturationPlan(seconds=0.5, max_concurrency=4))
    finally:
        server.shutdown()
    steps = found["steps"]
    assert steps[0]["concurrency"] == 1 and all(s["requests"] > 0 and s["errors"] == 0 for s in steps)
    assert [s["concurrency"] for s in steps] == [1, 2, 4][: len(steps)]
    assert found["rps"] == max(s["rps"] for s in steps) > 0


def test_each_phase_shows_its_tables_before_the_report_exists() -> None:
    data = sample_data()
    data["meta"] = {"machine_vcpus": 2}  # all the demo holds of meta until the report is written
    shown = [s.title for phase in tables.BY_PHASE for s in tables.for_phase(phase, data)]
    assert "Beside the original's claims" in shown and "Deployment recommendations" in shown
