"""Slow and vanishing clients at the gateway (tars_common.http_limits), on a real listening socket:
headers and bodies have deadlines, connections are capped, a client that leaves is not a 500."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tars_gateway.routes import Endpoint, RouteTable
from tars_gateway.server import GUARD, REQUESTS, create_app


async def _slow_upstream() -> TestServer:
    async def infer(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.5)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    server = TestServer(app)
    await server.start_server()
    return server


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[int, web.Application]]:
    upstream = await _slow_upstream()
    table = RouteTable()
    table.model_nodes["m"] = "tars"
    table.set_slice("m", "s", [(Endpoint(f"127.0.0.1:{upstream.port}"), True)])
    settings = argparse.Namespace(max_connections=5, header_timeout=0.5, body_timeout=0.5)
    app = create_app(table, settings)
    runner = web.AppRunner(app)
    await runner.setup()
    server = await app[GUARD].serve(runner, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, app
    finally:
        server.close()
        await runner.cleanup()
        await upstream.close()


async def _connect(port: int) -> socket.socket:
    sock = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port))
    sock.settimeout(5)
    return sock


async def _closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes ``sock`` (recv returns b"" or the connection is reset)."""
    started = time.monotonic()

    def wait() -> None:
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass

    await asyncio.to_thread(wait)
    return time.monotonic() - started


async def test_a_client_slow_to_send_headers_is_cut_off(gateway: tuple[int, web.Application]) -> None:
    port, app = gateway
    sock = await _connect(port)
    sock.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n")  # ... and never the blank line
    assert await _closed_after(sock) < 3
    assert app[GUARD].timed_out >= 1
    sock.close()


async def test_a_client_slow_to_send_its_body_gets_408(gateway: tuple[int, web.Application]) -> None:
    port, _ = gateway
    sock = await _connect(port)
    sock.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    answer = await asyncio.to_thread(sock.recv, 4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    sock.close()


async def test_connections_over_the_cap_are_closed_on_arrival(gateway: tuple[int, web.Application]) -> None:
    port, app = gateway
    held = [await _connect(port) for _ in range(5)]
    await asyncio.sleep(0.1)
    extra = await _connect(port)
    assert await _closed_after(extra) < 0.4  # well before the header deadline: refused, not timed out
    assert app[GUARD].refused >= 1
    for sock in [*held, extra]:
        sock.close()


async def test_a_client_that_leaves_is_not_an_error(
    gateway: tuple[int, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = gateway
    before = REQUESTS.labels("m", "499")._value.get()
    errors_before = REQUESTS.labels("m", "500")._value.get()
    sock = await _connect(port)
    sock.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    await asyncio.sleep(0.1)
    sock.close()  # mid-body
    with caplog.at_level(logging.INFO):
        await asyncio.sleep(0.3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "client went away" in caplog.text
    assert REQUESTS.labels("m", "499")._value.get() == before + 1
    assert REQUESTS.labels("m", "500")._value.get() == errors_before


async def test_405_says_what_is_allowed(gateway: tuple[int, web.Application]) -> None:
    port, _ = gateway
    sock = await _connect(port)
    sock.sendall(b"DELETE /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer: Any = await asyncio.to_thread(sock.recv, 4096)
    assert answer.startswith(b"HTTP/1.1 405"), answer
    assert b"\r\nAllow: GET" in answer
    sock.close()
