"""Prometheus metrics of one agent, kept in their own registry so several agents (tests) can coexist."""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_START_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The process's own memory, CPU and file handles, as every Prometheus exporter serves them.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.requests = Counter(
            "tars_agent_requests",
            "Requests served, by model, route and HTTP status.",
            ["model", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tars_agent_request_duration_seconds",
            "Request latency, by model, route and HTTP status.",
            ["model", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Cold starts as a first-class metric (knative/serving#13459): answers that waited for their
        # model to load on this agent, apart from the others.
        self.answers = Histogram(
            "tars_agent_answer_duration_seconds",
            "Time to answer, by model and start: cold (the model was loaded for the request) or warm.",
            ["model", "start"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sandbox_start = Histogram(
            "tars_agent_sandbox_start_seconds",
            "Time to start a fresh sandbox.",
            ["model"],
            buckets=_START_BUCKETS,
            registry=r,
        )
        self.pool_size = Gauge("tars_agent_pool_size", "Warm sandboxes ready, by model.", ["model"], registry=r)
        self.in_flight = Gauge(
            "tars_agent_in_flight_requests", "Requests being served, by model.", ["model"], registry=r
        )
        self.queued = Gauge(
            "tars_agent_queued_requests", "Requests waiting for a worker, by model.", ["model"], registry=r
        )
        self.guest_failures = Counter(
            "tars_agent_guest_failures", "Guest calls that gave no result, by reason.", ["model", "reason"], registry=r
        )
        self.rejected = Counter(
            "tars_agent_rejected_requests", "Requests refused for overload or drain.", ["model", "why"], registry=r
        )
        self.host_calls = Counter(
            "tars_agent_host_calls",
            "Host capability calls, by outcome.",
            ["model", "capability", "outcome"],
            registry=r,
        )
        self.host_call_latency = Histogram(
            "tars_agent_host_call_duration_seconds",
            "Host capability call latency.",
            ["capability"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.models_loaded = Gauge("tars_agent_models_loaded", "Models loaded on this agent.", registry=r)
        self.backend = Info("tars_agent_backend", "Sandbox backend chosen at start-up and why.", registry=r)
