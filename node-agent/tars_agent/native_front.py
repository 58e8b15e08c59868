"""The agent's native HTTP front (``--native-http``): Rust serves the model routes, Python decides.

``tars_native.NativeFront`` (node-agent/native/src/front.rs) owns the agent's public port. It serves
``POST /v2/models/{name}/infer`` and ``POST /v1/functions/{name}:invoke`` itself, in a fresh sandbox
per request under the model's limits, for the names and callers this module has taught it, and
forwards every other request unchanged to the aiohttp app, which then listens on a loopback port
only. Nothing else becomes reachable: a route the front does not own is answered by the same aiohttp
app as without it.

What Python teaches, after it has answered one of them itself with 200 (so auth allowed it):
- a route: the name the client used -> the model's prepared native guest, limits, version, and its
  per-model cap (models with host capabilities are not taught: their calls stay on the Python path);
  the front admits calls by the rules of :class:`~tars_agent.tenancy.FairAdmission` (its cap, a
  fair share of the cores while several models have work, a bounded queue per model) over workers
  of its own, as many as the agent's;
- a grant: the digest of the request's ``X-API-Key`` and ``Authorization`` headers (or "anyone" for
  a model open to all), valid for :data:`GRANT_TTL_S` and never past a token's ``exp``.
Any change to the loaded models clears every route and grant (a reload, a changed spec.access, a new
model making a name ambiguous), and so does a drain. Staleness of a revoked credential is bounded:
Python's own cache (TokenReview 30 s, API-key Secrets 5 s by default) plus :data:`GRANT_TTL_S`.

Everything the front does not answer itself as a strict success (guest errors, limits hit, outputs
that are not strictly the OIP shape) is judged here by the same code as the Python route, so the
answers and the failure metrics are the same. Its requests and durations are added to the agent's
Prometheus metrics and to the load the agent reports for autoscaling (requests per second, and
concurrency from their durations) every :data:`COLLECT_EVERY_S` and at each scrape.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ipaddress
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from tars_agent.agent import Agent
from tars_agent.capabilities import audit_log
from tars_agent.metrics import LATENCY_BUCKETS
from tars_agent.repository import AmbiguousModel, LoadedModel
from tars_agent.sandbox.base import FailureReason, GuestFailure, Limits, check_output
from tars_agent.sandbox.native_backend import NativeGuest, native_outcome
from tars_agent.server import ApiError, guest_answer, guest_failure_error, json_output
from tars_agent.tenancy import FairAdmission
from tars_api.access import DefaultAccess, Outcome
from tars_common.auth import AccessGuard, credential_from, token_expiry

log = logging.getLogger(__name__)
INFER_ROUTE = "/v2/models/{name}/infer"
INVOKE_ROUTE = "/v1/functions/{name}:invoke"
# How long the front may admit a caller on Python's word before Python decides again.
GRANT_TTL_S = 5.0
# The Lease reports the load of its last second: the front's figures are collected more often.
COLLECT_EVERY_S = 0.25


def credential_digest(headers: CIMultiDictProxy[str]) -> bytes | None:
    """SHA-256 of the credential headers as sent (the front digests the same bytes); None when one is
    repeated, which the front never serves."""
    parts = []
    for name in ("X-API-Key", "Authorization"):
        values = headers.getall(name, [])
        if len(values) > 1:
            return None
        parts.append(values[0].encode("utf-8", "surrogateescape") if values else b"")
    return hashlib.sha256(parts[0] + b"\0" + parts[1]).digest()


def grant_seconds(headers: Mapping[str, str], now: float) -> float:
    """:data:`GRANT_TTL_S`, cut to what is left of a bearer token's lifetime."""
    credential = credential_from(headers)
    expiry = token_expiry(credential.value) if credential.kind == "token" else None
    return GRANT_TTL_S if expiry is None else max(0.0, min(GRANT_TTL_S, expiry - now))


def open_to_all(guard: AccessGuard | None, model: LoadedModel) -> bool:
    """True when the Python route admits anyone to ``model`` without looking at credentials."""
    if guard is None or not guard.config.enabled:
        return True
    return model.spec.access is None and guard.config.default_access is DefaultAccess.OPEN


# The front's own rows of a histogram, by label values: (observations per bucket, not cumulative,
# +Inf last; their sum).
Added = Mapping[tuple[str, ...], tuple[list[int], float]]


class WithFront(Collector):
    """A prometheus_client histogram's series with the front's observations added: one family per
    metric name, as Prometheus requires, built with the client's public API (the histogram's own
    ``collect`` and a :class:`HistogramMetricFamily`). Registered in place of the histogram."""

    def __init__(self, histogram: Histogram, labels: tuple[str, ...], added: Callable[[], Added]) -> None:
        self.histogram = histogram
        self.labels = labels
        self.added = added
        self.bounds = [floatToGoString(b) for b in (*LATENCY_BUCKETS, float("inf"))]

    def describe(self) -> list[Metric]:
        return list(self.histogram.describe())

    def collect(self) -> Iterator[Metric]:
        added = self.added()
        for family in self.histogram.collect():
            buckets: dict[tuple[str, ...], dict[str, float]] = collections.defaultdict(dict)
            sums: dict[tuple[str, ...], float] = collections.defaultdict(float)
            for sample in family.samples:
                key = tuple(sample.labels[name] for name in self.labels)
                if sample.name.endswith("_bucket"):
                    buckets[key][sample.labels["le"]] = sample.value
                elif sample.name.endswith("_sum"):
                    sums[key] = sample.value
            merged = HistogramMetricFamily(family.name, family.documentation, labels=self.labels)
            for key in sorted({*buckets, *added}):
                counts, extra = added.get(key, ([0] * len(self.bounds), 0.0))
                series = [
                    (le, buckets[key].get(le, 0.0) + front)
                    for le, front in zip(self.bounds, itertools.accumulate(counts), strict=True)
                ]
                merged.add_metric(key, series, sums[key] + extra)
            yield merged


def with_front(
    registry: CollectorRegistry, histogram: Histogram, labels: tuple[str, ...], added: Callable[[], Added]
) -> None:
    registry.unregister(histogram)
    registry.register(WithFront(histogram, labels, added))


def answers_warm(answers: Added) -> Added:
    """The front's answers below 400 by model: ``tars_agent_answer_duration_seconds{start="warm"}``
    (a model the front serves is loaded)."""
    warm: dict[tuple[str, ...], tuple[list[int], float]] = {}
    for (label, _route, status), (counts, total) in answers.items():
        if int(status) < 400:
            before, before_sum = warm.get((label, "warm"), ([0] * len(counts), 0.0))
            warm[(label, "warm")] = ([a + b for a, b in zip(before, counts, strict=True)], before_sum + total)
    return warm


def forwarded_for(request: web.Request) -> str | None:
    """The client address the front adds to what it forwards (the last ``X-Forwarded-For`` entry),
    believed only from a loopback peer: the aiohttp app behind the front listens on loopback only."""
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    if not peer or not ipaddress.ip_address(peer[0]).is_loopback:
        return None
    values = request.headers.getall("X-Forwarded-For", [])
    if not values:
        return None
    return values[-1].rsplit(",", 1)[-1].strip() or None


@web.middleware
async def client_address(request: web.Request, handler: Any) -> web.StreamResponse:
    """Outermost, behind the front: the request as from the client it was forwarded for (what
    ``request.remote`` says)."""
    client = forwarded_for(request)
    return await handler(request if client is None else request.clone(remote=client))


class NativeHttp:
    """The front, and the Python half of it: teaching, judging, metrics."""

    def __init__(self, agent: Agent, guard: AccessGuard | None, admission: FairAdmission) -> None:
        self.agent = agent
        self.guard = guard
        self.admission = admission
        self.front: Any = None  # tars_native.NativeFront, once started
        self._limits: dict[str, Limits] = {}
        self._collector: asyncio.Task[None] | None = None
        # Answers the front gave itself, by (model, route, status), since start (for logs and tests).
        self.served: collections.Counter[tuple[str, str, int]] = collections.Counter()
        # What the in-flight gauge last got from the front, by model (the Python route moves it too).
        self._in_flight: dict[str, int] = {}

    def start(self, upstream_port: int, reuse_port: bool = False, tls: tuple[Path, Path] | None = None) -> int:
        """Binds the agent's public port (returned: the one bound when it asked for 0) in front of the
        aiohttp app on ``upstream_port``, speaking HTTPS with ``tls`` (certificate and key files)."""
        import tars_native  # optional extension: imported only with --native-http

        config = self.agent.config
        self.front = tars_native.NativeFront(
            config.host,
            config.port,
            upstream_port,
            self.judge,
            config.workers,
            self.admission.queue_per_model,
            config.max_body_bytes,
            list(LATENCY_BUCKETS),
            reuse_port=reuse_port,
            tls_cert=tls[0] if tls is not None else None,
            tls_key=tls[1] if tls is not None else None,
        )
        self.agent.repository.on_change.append(self.front.clear)
        metrics = self.agent.metrics
        with_front(metrics.registry, metrics.latency, ("model", "route", "status"), self._answers)
        with_front(metrics.registry, metrics.answers, ("model", "start"), lambda: answers_warm(self._answers()))
        with_front(metrics.registry, metrics.host_call_latency, ("capability",), self._host_calls)
        self._collector = asyncio.get_running_loop().create_task(self._collect_forever())
        return int(self.front.port)

    def close(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
        if self.front is not None:
            self.front.close()

    def forget(self) -> None:
        """Everything back to Python (a drain: Python answers 503)."""
        if self.front is not None:
            self.front.clear()

    # -- teaching ----------------------------------------------------------------------------------

    def find(self, name: str) -> LoadedModel | None:
        try:
            return self.agent.repository.find(name)
        except AmbiguousModel:
            return None

    def learn(self, request: web.Request, model: LoadedModel | None) -> None:
        """Teaches the front what Python just served: ``model`` is the one the name resolved to before
        the request (auth decided for it), and it must still be the one loaded."""
        name = request.match_info["name"]
        if self.front is None or model is None or model.spec.capabilities or self.agent.draining:
            return
        if self.find(name) is not model:
            return
        prepared = model.pool.prepared
        if not isinstance(prepared, NativeGuest):
            return
        label = str(model.key)
        self._limits[label] = model.limits
        limits = model.limits
        # The model's cap now; the fair share among busy models is applied by the front per request.
        cap = self.admission.cap()
        # Its host calls are all refused by the front (it has no capabilities), counted by the names
        # the agent knows like the Python route's.
        known = {*model.bundle.capabilities, *self.agent.repository.capabilities.names()}
        self.front.route(
            name,
            label,
            model.key.name,
            model.version,
            prepared.guest,
            limits.cpu_time_ms,
            limits.wall_timeout_ms,
            limits.output_bytes,
            cap,
            self.admission.per_model is None,
            known,
        )
        if open_to_all(self.guard, model):
            self.front.grant(name, None, GRANT_TTL_S)
        elif (digest := credential_digest(request.headers)) is not None:
            self.front.grant(name, digest, grant_seconds(request.headers, time.time()))

    # -- judging (called by the front's threads) ---------------------------------------------------

    def judge(
        self,
        route: str,
        label: str,
        model_name: str,
        version: str,
        request_id: str | None,
        kind: str,
        text: str,
        stderr: bytes,
        out_of_memory: bool,
    ) -> tuple[int, str, int]:
        """What the Python route answers for this guest outcome: (status, JSON body, Retry-After)."""
        try:
            if kind == "wall":
                raise GuestFailure(FailureReason.TIMEOUT, "guest exceeded its wall-clock time limit")
            limits = self._limits.get(label, Limits())
            output = check_output(native_outcome(kind, text, limits, lambda: (stderr, out_of_memory)), limits)
            if route == INVOKE_ROUTE:
                return 200, json_output(output), 0
            answer = guest_answer(self.agent, label, model_name, version, request_id, output)
            return 200, json.dumps(answer.model_dump(exclude_none=True)), 0
        except GuestFailure as failure:
            error = guest_failure_error(self.agent, label, failure)
        except ApiError as api_error:
            error = api_error
        retry = int(error.headers.get("Retry-After", "0"))
        return error.status, json.dumps(error.body.model_dump(exclude_none=True)), retry

    # -- metrics -----------------------------------------------------------------------------------

    def collect(self) -> None:
        """What the front did since the last call, into the counters, gauges and reported load (its
        durations are added to the histograms at each scrape, by :class:`WithFront`)."""
        if self.front is None:
            return
        agent, metrics = self.agent, self.agent.metrics
        decisions = self.guard.decisions if self.guard is not None and self.guard.config.enabled else None
        answers, refused = self.front.drain()
        for label, route, status, count, seconds in answers:
            metrics.requests.labels(label, route, str(status)).inc(count)
            if status == 429:  # its queue for the model was full, as the Python route counts it
                metrics.rejected.labels(label, "overload").inc(count)
            if decisions is not None:  # the front took them on a grant: allowed, as Python decided
                decisions.labels(label, Outcome.ALLOWED.value).inc(count)
            self.served[(label, route, status)] += count
            agent.rates.record(label, count)
            agent.concurrency.add(label, seconds)
        for label, name, known, count, seconds in refused:
            capability = name if known else "<unknown>"
            metrics.host_calls.labels(label, capability, "denied").inc(count)
            if audit_log.isEnabledFor(logging.INFO):
                line = {"model": label, "capability": name, "outcome": "denied"}
                line["duration_ms"] = round(seconds / count * 1000, 3)
                for _ in range(count):
                    audit_log.info(json.dumps(line))
        # In flight: running or waiting in the front's admission, as the Python route counts them.
        now = {label: running + waiting for label, running, waiting in self.front.admitted()}
        for label in {*now, *self._in_flight}:
            change = now.get(label, 0) - self._in_flight.get(label, 0)
            if change:
                metrics.in_flight.labels(label).inc(change)
        self._in_flight = now

    def _answers(self) -> Added:
        answers, _ = self.front.histograms()
        return {(label, route, str(status)): (counts, total) for label, route, status, counts, total in answers}

    def _host_calls(self) -> Added:
        _, host_calls = self.front.histograms()
        return {(capability,): (counts, total) for capability, counts, total in host_calls}

    async def _collect_forever(self) -> None:
        while True:
            await asyncio.sleep(COLLECT_EVERY_S)
            self.collect()

    def middleware(self) -> Any:
        """Innermost (after auth): teaches the front what Python served, and adds the front's
        figures to the metrics before they are scraped."""

        @web.middleware
        async def native_http(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path == "/metrics":
                self.collect()
            resource = request.match_info.route.resource
            if request.method != "POST" or resource is None or resource.canonical not in (INFER_ROUTE, INVOKE_ROUTE):
                return await handler(request)
            model = self.find(request.match_info["name"])
            response = await handler(request)
            if response.status == 200:
                self.learn(request, model)
            return response

        return native_http
