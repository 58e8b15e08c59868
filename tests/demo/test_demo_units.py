"""The demo's pure parts: plan parsing, statistics, cost, recommendations, security verdicts, report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tarsctl.demo import cost, recommend, report, security
from tarsctl.demo.plan import DEFAULT_PLAN, CostPlan, PlanError, Scenario, load_plan, parse_plan
from tarsctl.demo.stats import percentile, ratio, summarize

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
    seed = next(c.seed for c in plan.benchmark if c.model == "sentiment")
    assert seed is not None and seed.p50_ms == 6 and "seed" in seed.source


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
    c = cost.model_cost("m", rss_mib=10.0, rps=200.0, plan=plan, inputs=inputs)
    assert c.tars_models_per_node == 102  # (1124 - 100) / 10
    assert c.tars_per_model_hour == pytest.approx(10 / 1024)
    # A container holds the model plus its own runtime (110 MiB): 10 fit by memory, 8 by CPU requests.
    assert c.baseline_models_per_node == 8
    assert c.baseline_per_model_hour == pytest.approx(1 / 8)
    # 100 req/s per vCPU x 4 vCPUs x 3600 s per node-hour.
    assert c.tars_per_million_requests == pytest.approx(1e6 / (100 * 4 * 3600))
    assert c.saving_per_model_hour == pytest.approx((1 / 8) / (10 / 1024))
    table = cost.cost_table({"m": (10.0, 200.0)}, plan, inputs)
    assert table["rows"][0]["model"] == "m" and len(table["assumptions"]) >= 4
    with pytest.raises(ValueError):
        cost.model_cost("m", 1, 1, CostPlan(node_price_per_hour=1, node_memory_mib=50, node_vcpus=1), inputs)


def test_recommendation_rules() -> None:
    measured = [
        recommend.Measured("tiny", "text-generation", p95_ms=50, rps=100, replicas=2, rss_mib=30),
        recommend.Measured("big", "text-generation", p95_ms=400, rps=10, replicas=1, rss_mib=400),
        recommend.Measured("sent", "sentiment", p95_ms=20, rps=300, replicas=2, rss_mib=12),
    ]
    edge = recommend.recommend(
        "edge",
        Scenario(model_kinds=["text-generation"], p95_budget_ms=500, target_rps=120, prefer="smallest"),
        measured,
        1000,
    )
    assert edge.model == "tiny" and edge.meets_budget and edge.replicas == 3 and edge.nodes == 1
    strict = recommend.recommend(
        "chat", Scenario(model_kinds=["text-generation"], p95_budget_ms=10, target_rps=1), measured, 1000
    )
    assert strict.model == "tiny" and not strict.meets_budget and "no candidate fits" in strict.why
    none = recommend.recommend(
        "search", Scenario(model_kinds=["embedding"], p95_budget_ms=10, target_rps=1), measured, 1000
    )
    assert none.model is None
    many = recommend.recommend(
        "analytics", Scenario(model_kinds=["sentiment"], p95_budget_ms=100, target_rps=15000), measured, 500
    )
    assert many.replicas == 100 and many.nodes == 3  # 100 x 12 MiB over 500 MiB nodes


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


def test_report_renders_from_data_only(tmp_path: Path) -> None:
    data = {
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
            "models": [
                {
                    "model": "m",
                    "kind": "sentiment",
                    "replicas": 1,
                    "apply_to_loaded_ms": {"n1": 200.0},
                    "apply_to_ready_s": 0.5,
                    "rss_per_replica_mib": float("nan"),
                    "declared_mib": 32,
                }
            ],
            "functions": [],
        },
        "benchmark": [
            {
                "model": "m",
                "requests_sent": 3,
                "concurrency": 1,
                "replicas": 1,
                "latencies_ms": [1.0, 2.0, 3.0],
                "summary": summarize([1.0, 2.0, 3.0], [200, 200, 200], 1.0).to_json(),
                "seed": None,
            }
        ],
        "sandbox_start": {
            "m": {"count": 2.0, "sum_s": 0.004, "buckets": {"0.001": 0.0, "0.005": 2.0, "+Inf": 2.0}, "mean_ms": 2.0}
        },
        "security": None,
        "cost": {"rows": [], "assumptions": ["a"]},
        "recommendations": [],
        "total_s": 10.0,
        "meta": {"finished_at": "now", "machine_vcpus": 2},
    }
    out = report.write(tmp_path, data)
    saved = json.loads((out / "report.json").read_text())
    assert saved["load"]["models"][0]["rss_per_replica_mib"] is None  # NaN is not JSON
    assert "| m | 3 | 0 |" in (out / "report.md").read_text()
    assert "<table>" in (out / "report.html").read_text()
