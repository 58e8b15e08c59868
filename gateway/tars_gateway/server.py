"""tars-gateway: one address for every model of a namespace, in front of the agents.

Least outstanding requests over the agents that hold a model; an inference that fails on one agent
(connection refused, reset, 502/503, no answer in time, a hung agent: ``tars_gateway.upstream``) is
retried on another — a request runs in a fresh sandbox, so repeating it is safe; an agent that fails
several attempts in a row is ejected for a while (``tars_gateway.outliers``); a request for a model
at zero replicas goes to any ready agent of its TarsNode, and waits (bounded) while none is ready.
Slow clients and too many connections are cut off by ``tars_common.http_limits``.

With ``--auth on`` callers are checked against the model's ``spec.access`` (``tars_gateway.auth``)
before an agent is picked; ``--tls-cert``/``--tls-key`` serve HTTPS and ``--upstream-ca`` reaches the
agents over HTTPS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from tars_api.access import DEFAULT_ACCESS, DefaultAccess
from tars_common import oip_binary, oip_grpc
from tars_common.auth import AccessGuard, AuthConfig
from tars_common.http_limits import CLIENT_CLOSED_REQUEST, ConnectionGuard, HttpLimits
from tars_common.requested_model import requested_model
from tars_gateway.outliers import EjectionPolicy, Outliers
from tars_gateway.routes import Endpoint, RouteTable
from tars_gateway.upstream import AttemptBounds, AttemptFailed, attempt

log = logging.getLogger("tars_gateway")
REQUESTS = Counter("tars_gateway_requests_total", "Requests by model and status", ["model", "status"])
RETRIES = Counter("tars_gateway_retries_total", "Requests retried on another agent", ["model"])
LATENCY = Histogram("tars_gateway_request_duration_seconds", "End-to-end latency at the gateway", ["model"])
# Cold starts as a first-class metric (knative/serving#13459): the agent marks an answer that waited
# for its model to load (COLD_START_HEADER); everything else is warm.
ANSWERS = Histogram(
    "tars_gateway_answer_duration_seconds",
    "Time to answer at the gateway, by model and start: cold (the model was woken for it) or warm",
    ["model", "start"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
COLD_START_HEADER = "X-Tars-Cold-Start"
ATTEMPTS = Counter(
    "tars_gateway_upstream_attempts_total",
    "Attempts at agents by model and outcome (answered, unreachable, timeout, hung, or the retried status)",
    ["model", "outcome"],
)
EJECTIONS = Counter("tars_gateway_ejections_total", "Agents ejected after failing attempts in a row", ["agent"])
EJECTED = Gauge("tars_gateway_ejected_agents", "Agents ejected right now")
RETRYABLE_STATUS = {502, 503}
# A held request looks again this often even when nothing says the table changed (a safety net).
RECHECK_S = 1.0
MAX_BODY = 8 * 1024 * 1024
TABLE: web.AppKey[RouteTable] = web.AppKey("table", RouteTable)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
SETTINGS: web.AppKey[argparse.Namespace] = web.AppKey("settings", argparse.Namespace)
SCHEME: web.AppKey[str] = web.AppKey("scheme", str)
OUTLIERS: web.AppKey[Outliers] = web.AppKey("outliers", Outliers)
GUARD: web.AppKey[ConnectionGuard] = web.AppKey("guard", ConnectionGuard)
# Forwarded to the agent, which checks the caller again.
FORWARDED_HEADERS = ("content-type", "authorization", "x-api-key", "inference-header-content-length")


def _json_error(status: int, error: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response({"error": error}, status=status, headers=headers)


async def _wait_for_endpoint(
    table: RouteTable, outliers: Outliers, model: str, tried: set[str], wait_s: float
) -> Endpoint | None:
    """An agent for the request; while there is none, the request is held until the table changes
    (discovery saw an agent or the model become ready) and forwarded then, not at the next poll."""
    deadline = time.monotonic() + wait_s
    changed = asyncio.Event()
    table.listeners.append(changed.set)
    try:
        while True:
            changed.clear()
            endpoint = table.pick(model, tried, avoid=outliers.ejected(time.monotonic()))
            remaining = deadline - time.monotonic()
            if endpoint is not None or remaining <= 0:
                return endpoint
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, RECHECK_S))
    finally:
        table.listeners.remove(changed.set)


def _failed(request: web.Request, model: str, endpoint: Endpoint, outcome: str, error: str) -> None:
    ATTEMPTS.labels(model, outcome).inc()
    RETRIES.labels(model).inc()
    if request.app[OUTLIERS].failure(endpoint.address, time.monotonic()):
        EJECTIONS.labels(endpoint.address).inc()
        log.warning("agent %s ejected after failing attempts in a row (last: %s)", endpoint.address, error)
    log.info("model %s: %s at %s; trying another agent", model, error, endpoint.address)


async def forward(request: web.Request) -> web.StreamResponse:
    table, session, settings = request.app[TABLE], request.app[SESSION], request.app[SETTINGS]
    scheme, outliers = request.app[SCHEME], request.app[OUTLIERS]
    model = await requested_model(request) or ""
    if not table.knows(model):
        REQUESTS.labels(model, "404").inc()
        return _json_error(404, f"model {model!r} not found")
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
    bounds = AttemptBounds(settings.upstream_timeout, settings.probe_after, settings.probe_timeout)
    started = time.perf_counter()
    tried: set[str] = set()
    last_error = "no agent is ready for this model"
    # Like Knative's activator, a request is held while no agent can take it (a model waking from zero,
    # the only agent draining in a rolling update) for up to wake_timeout in all, at least a second
    # for each retry.
    hold_until = time.monotonic() + settings.wake_timeout
    for attempt_no in range(settings.attempts):
        wait_s = max(hold_until - time.monotonic(), 1.0)
        endpoint = await _wait_for_endpoint(table, outliers, model, tried, wait_s)
        if endpoint is None:
            break
        tried.add(endpoint.address)
        table.started(endpoint)
        base = f"{scheme}://{endpoint.address}"
        try:
            response = await attempt(session, base, request.method, str(request.rel_url), body, headers, bounds)
        except AttemptFailed as exc:
            outcome, last_error = exc.outcome, exc.detail
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            outcome, last_error = "unreachable", f"agent unreachable ({type(exc).__name__})"
        else:
            last_try = attempt_no + 1 == settings.attempts
            if response.status not in RETRYABLE_STATUS or last_try:
                if response.status not in RETRYABLE_STATUS:
                    outliers.success(endpoint.address)
                ATTEMPTS.labels(model, "answered").inc()
                REQUESTS.labels(model, str(response.status)).inc()
                LATENCY.labels(model).observe(time.perf_counter() - started)
                if response.status < 400:
                    start = "cold" if response.headers.get(COLD_START_HEADER) else "warm"
                    ANSWERS.labels(model, start).observe(time.perf_counter() - started)
                return response
            outcome, last_error = str(response.status), f"agent answered {response.status}"
        finally:
            table.finished(endpoint)
        _failed(request, model, endpoint, outcome, last_error)
    REQUESTS.labels(model, "503").inc()
    return _json_error(503, last_error, retry_after=1)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"live": True} if request.path.endswith("live") else {"ready": True})


async def server_metadata(_: web.Request) -> web.Response:
    # What the gateway passes through to the agents: the OIP extensions and OpenAI's routes.
    extensions = [oip_binary.EXTENSION, "tars-functions", "openai"]
    return web.json_response(
        {"name": "tars-gateway", "version": metadata.version("tars-k8s"), "extensions": extensions}
    )


async def metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(
    table: RouteTable,
    settings: argparse.Namespace,
    auth: Any = None,
    upstream_ssl: ssl.SSLContext | None = None,
) -> web.Application:
    """``auth`` is a middleware from ``tars_gateway.auth.gateway_middleware``; ``upstream_ssl`` makes
    the gateway reach agents over HTTPS. ``settings`` may name only some options (tests): the others
    take the command line's defaults. Serve it with ``app[GUARD].serve(runner, ...)``."""
    settings = argparse.Namespace(**{**vars(parse_args([])), **vars(settings)})
    guard = ConnectionGuard(
        HttpLimits(settings.max_connections, settings.header_timeout, settings.body_timeout),
        on_client_gone=lambda request: REQUESTS.labels(
            request.match_info.get("name", ""), str(CLIENT_CLOSED_REQUEST)
        ).inc(),
    )
    # The guard goes first: it times the body and sees a client leave whatever the handler is.
    app = web.Application(client_max_size=MAX_BODY, middlewares=[guard.middleware, *([auth] if auth else [])])
    app[TABLE] = table
    app[SETTINGS] = settings
    app[SCHEME] = "https" if upstream_ssl is not None else "http"
    app[GUARD] = guard
    outliers = app[OUTLIERS] = Outliers(EjectionPolicy(settings.eject_after, settings.ejection_time))
    EJECTED.set_function(lambda: len(outliers.ejected(time.monotonic())))

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        # Each attempt bounds its own answer (tars_gateway.upstream); the session bounds the connect.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout)
        connector = aiohttp.TCPConnector(limit=0, ssl=upstream_ssl if upstream_ssl is not None else True)
        app[SESSION] = aiohttp.ClientSession(timeout=timeout, connector=connector)
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/v2/health/live", health)
    app.router.add_get("/v2/health/ready", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/v2/models/{name}", forward)
    app.router.add_route("*", "/v2/models/{name}/{rest:.*}", forward)
    app.router.add_post("/v1/functions/{name}:invoke", forward)
    app.router.add_post("/openai/v1/completions", forward)
    app.router.add_post("/openai/v1/chat/completions", forward)
    app.router.add_get("/v2", server_metadata)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tars-gateway", description=__doc__)
    parser.add_argument("--namespace", default="default", help="namespace whose models the gateway serves")
    parser.add_argument("--port", type=int, default=int(os.environ.get("TARS_GATEWAY_PORT", "8000")))
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=int(os.environ.get("TARS_GATEWAY_GRPC_PORT", "8001")),
        help="Open Inference Protocol gRPC port (0: off)",
    )
    parser.add_argument("--attempts", type=int, default=3, help="agents tried per request")
    parser.add_argument(
        "--wake-timeout",
        type=float,
        # A single-node rolling update (the old agent drains and exits, the new pod starts, loads and is
        # routed) took 12 s on the real test node under load; 10 s dropped the request held across it.
        default=30.0,
        help="seconds a request waits for a ready agent (a model waking from zero, the only agent rolling)",
    )
    bounds = parser.add_argument_group("upstream attempts and slow clients")
    bounds.add_argument("--connect-timeout", type=float, default=1.0, help="seconds to connect to an agent")
    bounds.add_argument(
        "--upstream-timeout",
        type=float,
        default=15.0,
        help="seconds an agent has to answer one attempt (well below clients' timeouts, so a retry fits)",
    )
    bounds.add_argument(
        "--probe-after",
        type=float,
        default=1.0,
        help="an answer slower than this gets the agent's liveness checked, as often; a hung agent is left",
    )
    bounds.add_argument(
        "--probe-timeout", type=float, default=2.0, help="seconds an agent has to answer that liveness check"
    )
    bounds.add_argument("--eject-after", type=int, default=3, help="failed attempts in a row that eject an agent")
    bounds.add_argument(
        "--ejection-time", type=float, default=10.0, help="seconds of a first ejection; each next one lasts longer"
    )
    bounds.add_argument("--max-connections", type=int, default=1024, help="open client connections at most")
    bounds.add_argument("--header-timeout", type=float, default=10.0, help="seconds a client has to send headers")
    bounds.add_argument("--body-timeout", type=float, default=30.0, help="seconds a client has to send its body")
    parser.add_argument(
        "--auth",
        choices=("on", "off"),
        default=os.environ.get("TARS_GATEWAY_AUTH", "off"),
        help="check callers against the models' spec.access (needs tokenreviews create, secrets get)",
    )
    parser.add_argument(
        "--default-access",
        choices=[d.value for d in DefaultAccess],
        default=os.environ.get("TARS_DEFAULT_ACCESS", DEFAULT_ACCESS.value),
        help="who may call a model without spec.access when auth is on",
    )
    parser.add_argument("--metrics-auth", action="store_true", help="/metrics needs a ServiceAccount token")
    parser.add_argument("--token-audience", action="append", default=[], help="audience tokens must carry")
    parser.add_argument("--tls-cert", default=os.environ.get("TARS_TLS_CERT"), help="serve HTTPS with this cert")
    parser.add_argument("--tls-key", default=os.environ.get("TARS_TLS_KEY"), help="key of --tls-cert")
    parser.add_argument(
        "--upstream-ca", default=os.environ.get("TARS_UPSTREAM_CA"), help="reach agents over HTTPS, trusting this CA"
    )
    return parser.parse_args(argv)


def auth_config(settings: argparse.Namespace) -> AuthConfig:
    return AuthConfig(
        enabled=settings.auth == "on",
        default_access=DefaultAccess(settings.default_access),
        metrics_require_token=settings.metrics_auth,
        audiences=tuple(settings.token_audience),
    )


async def start_grpc(settings: argparse.Namespace) -> Any:
    """The OIP gRPC service, a front door onto the gateway's own REST listener (tars_common.oip_grpc):
    routing, holding, retries and access checks stay in one place."""
    https = settings.tls_cert is not None
    # Loopback to this very process: its certificate names the Service, not 127.0.0.1.
    bridge = oip_grpc.RestBridge(f"{'https' if https else 'http'}://127.0.0.1:{settings.port}", ssl_context=not https)
    tls = None
    if https:
        with open(settings.tls_key, "rb") as key, open(settings.tls_cert, "rb") as cert:
            tls = (key.read(), cert.read())
    try:
        server, _ = await oip_grpc.start(bridge, "0.0.0.0", settings.grpc_port, MAX_BODY, tls)
    except RuntimeError as exc:
        log.error("gRPC not served: port %d cannot be bound (%s); REST goes on", settings.grpc_port, exc)
        return None
    log.info("gRPC (Open Inference Protocol) on :%d%s", settings.grpc_port, " with TLS" if tls else "")
    return server


def main(argv: list[str] | None = None) -> None:
    from tars_common import tls
    from tars_common.kube import load_client_config
    from tars_gateway.auth import ModelPolicies, gateway_guard, gateway_middleware
    from tars_gateway.discovery import Discovery

    settings = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise SystemExit("--tls-cert and --tls-key go together")
    table = RouteTable()

    async def run() -> None:
        api = load_client_config()
        discovery = Discovery(table, settings.namespace, api, asyncio.get_running_loop())
        discovery.start()
        config = auth_config(settings)
        guard: AccessGuard | None = gateway_guard(config, api) if config.enabled else None
        middleware = gateway_middleware(guard, ModelPolicies(api, settings.namespace)) if guard else None
        upstream = tls.upstream_context(settings.upstream_ca) if settings.upstream_ca else None
        app = create_app(table, settings, middleware, upstream)
        runner = web.AppRunner(app)
        await runner.setup()
        served = tls.server_context(settings.tls_cert, settings.tls_key) if settings.tls_cert else None
        await app[GUARD].serve(runner, "0.0.0.0", settings.port, served)
        log.info("tars-gateway serving namespace %s on :%d", settings.namespace, settings.port)
        grpc_server = await start_grpc(settings) if settings.grpc_port > 0 else None
        try:
            await asyncio.Event().wait()
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=1.0)

    asyncio.run(run())


if __name__ == "__main__":
    main()
