"""tars-gateway: one address for every model of a namespace, in front of the agents.

Least outstanding requests over the agents that hold a model; an inference that fails on one agent
(connection refused, reset, 502/503) is retried on another — a request runs in a fresh sandbox, so
repeating it is safe; a request for a model at zero replicas goes to any ready agent of its TarsNode,
and waits (bounded) while none is ready.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from tars_gateway.routes import Endpoint, RouteTable

log = logging.getLogger("tars_gateway")
REQUESTS = Counter("tars_gateway_requests_total", "Requests by model and status", ["model", "status"])
RETRIES = Counter("tars_gateway_retries_total", "Requests retried on another agent", ["model"])
LATENCY = Histogram("tars_gateway_request_duration_seconds", "End-to-end latency at the gateway", ["model"])
RETRYABLE_STATUS = {502, 503}
MAX_BODY = 8 * 1024 * 1024
TABLE: web.AppKey[RouteTable] = web.AppKey("table", RouteTable)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
SETTINGS: web.AppKey[argparse.Namespace] = web.AppKey("settings", argparse.Namespace)


def _json_error(status: int, error: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response({"error": error}, status=status, headers=headers)


async def _wait_for_endpoint(table: RouteTable, model: str, tried: set[str], wait_s: float) -> Endpoint | None:
    deadline = time.monotonic() + wait_s
    while True:
        endpoint = table.pick(model, tried)
        if endpoint is not None or time.monotonic() >= deadline:
            return endpoint
        await asyncio.sleep(0.02)


async def forward(request: web.Request) -> web.StreamResponse:
    table, session, settings = request.app[TABLE], request.app[SESSION], request.app[SETTINGS]
    model = request.match_info["name"]
    if not table.knows(model):
        REQUESTS.labels(model, "404").inc()
        return _json_error(404, f"model {model!r} not found")
    body = await request.read()
    started = time.perf_counter()
    tried: set[str] = set()
    last_error = "no agent is ready for this model"
    for attempt in range(settings.attempts):
        endpoint = await _wait_for_endpoint(table, model, tried, settings.wake_timeout if attempt == 0 else 1.0)
        if endpoint is None:
            break
        tried.add(endpoint.address)
        table.started(endpoint)
        try:
            async with session.request(
                request.method,
                f"http://{endpoint.address}{request.rel_url}",
                data=body,
                headers={k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")},
            ) as upstream:
                payload = await upstream.read()
                if upstream.status in RETRYABLE_STATUS and attempt + 1 < settings.attempts:
                    RETRIES.labels(model).inc()
                    last_error = f"agent answered {upstream.status}"
                    continue
                REQUESTS.labels(model, str(upstream.status)).inc()
                LATENCY.labels(model).observe(time.perf_counter() - started)
                headers = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "retry-after")}
                return web.Response(status=upstream.status, body=payload, headers=headers)
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            RETRIES.labels(model).inc()
            last_error = f"agent unreachable ({type(exc).__name__})"
            log.info("model %s: %s at %s; trying another agent", model, last_error, endpoint.address)
        finally:
            table.finished(endpoint)
    REQUESTS.labels(model, "503").inc()
    return _json_error(503, last_error, retry_after=1)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"live": True} if request.path.endswith("live") else {"ready": True})


async def metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(table: RouteTable, settings: argparse.Namespace) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[TABLE] = table
    app[SETTINGS] = settings

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=settings.upstream_timeout, sock_connect=1.0)
        app[SESSION] = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/v2/health/live", health)
    app.router.add_get("/v2/health/ready", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/v2/models/{name}", forward)
    app.router.add_route("*", "/v2/models/{name}/{rest:.*}", forward)
    app.router.add_post("/v1/functions/{name}:invoke", forward)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tars-gateway", description=__doc__)
    parser.add_argument("--namespace", default="default", help="namespace whose models the gateway serves")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--attempts", type=int, default=3, help="agents tried per request")
    parser.add_argument(
        "--wake-timeout",
        type=float,
        default=10.0,
        help="seconds a request waits for a ready agent (a model waking from zero)",
    )
    parser.add_argument("--upstream-timeout", type=float, default=30.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from tars_gateway.discovery import Discovery
    from tars_operator.kube import load_client_config

    settings = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    table = RouteTable()

    async def run() -> None:
        discovery = Discovery(table, settings.namespace, load_client_config(), asyncio.get_running_loop())
        discovery.start()
        runner = web.AppRunner(create_app(table, settings))
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", settings.port).start()
        log.info("tars-gateway serving namespace %s on :%d", settings.namespace, settings.port)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
