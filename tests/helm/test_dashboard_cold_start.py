"""The Grafana dashboard shows cold starts apart from warm answers (issue 22), from the metrics the
agents and the gateway really export (tests/gateway/test_cold_start.py scrapes them)."""

from __future__ import annotations

import json
from typing import Any

from chart_support import RELEASE, find

from tars_agent.metrics import AgentMetrics


def dashboard_panels(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    configmap = find(manifests, "ConfigMap", f"{RELEASE}-tars-operator-dashboard")
    dashboard = json.loads(configmap["data"]["tars-overview.json"])
    return {p["title"]: p for p in dashboard["panels"] if p["type"] != "row"}


def test_the_dashboard_has_a_cold_start_panel_on_the_exported_histograms(full_manifests: list[dict[str, Any]]) -> None:
    panels = dashboard_panels(full_manifests)
    cold = panels["Cold start p50 / p99 by model"]
    exprs = [t["expr"] for t in cold["targets"]]
    assert any("histogram_quantile(0.5" in e and 'start="cold"' in e for e in exprs)
    assert any("histogram_quantile(0.99" in e and 'start="cold"' in e for e in exprs)
    assert all("tars_gateway_answer_duration_seconds_bucket" in e for e in exprs)
    starts = panels["Cold and warm answers per second by model"]
    assert "tars_agent_answer_duration_seconds_count" in starts["targets"][0]["expr"]
    assert "start" in starts["targets"][0]["expr"]
    # The agent really exports the histogram the panel reads, with the labels it groups by.
    exported = {m.name: m for m in AgentMetrics().registry.collect()}
    assert "tars_agent_answer_duration_seconds" in exported
    assert AgentMetrics().answers._labelnames == ("model", "start")
