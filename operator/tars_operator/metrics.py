"""The operator's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILIATIONS = Counter(
    "tars_operator_reconciliations_total", "Reconciliations by kind and result", ["kind", "result"]
)
RECONCILE_SECONDS = Histogram(
    "tars_operator_reconcile_duration_seconds",
    "Time one reconciliation took",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MANAGED = Gauge("tars_operator_managed_objects", "Custom resources the operator manages", ["kind"])
PLACEMENT_FAILURES = Counter(
    "tars_operator_placement_failures_total", "Reconciliations that left replicas unplaced", ["model"]
)
AGENTS = Gauge("tars_operator_agents", "Agents per TarsNode by state", ["tarsnode", "state"])
API_REQUESTS = Counter(
    "tars_operator_api_requests_total",
    "Requests the operator's reconciles sent to the API server (kopf's watches not included)",
    ["verb", "resource"],
)
API_SECONDS = Histogram(
    "tars_operator_api_request_duration_seconds",
    "Time from sending a request to the API server to its answer, in the worker thread",
    ["verb", "resource"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
