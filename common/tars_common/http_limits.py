"""Limits for an aiohttp server facing untrusted clients: the agent's data plane and the gateway.

aiohttp bounds the size of headers and bodies but not the time a client may take to send them, nor
the number of connections held open. Thousands of slow connections (a byte every few seconds) then
hold file handles and memory until the process runs out. This module adds what a front proxy would:

- at most ``max_connections`` open at once; one over the cap is closed on arrival;
- a request's headers must arrive within ``header_timeout_s`` of the connection opening (or of their
  first byte on a kept-alive connection), else the connection is closed; a kept-alive connection
  idle for ``idle_timeout_s`` is closed too;
- its body within ``body_timeout_s`` of the headers, else 408;
- a client that goes away mid-request is an INFO line and status 499 (nginx's "client closed
  request"), not an ERROR traceback and a 500 that would count against the server.

Use: ``guard = ConnectionGuard(limits)``; put ``guard.middleware`` first in the application's
middlewares; after ``runner.setup()``, ``server = await guard.serve(runner, host, port, ssl_context)``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)
CLIENT_CLOSED_REQUEST = 499


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    # Longer than clients keep idle connections (aiohttp's 15 s), so they close first, not mid-reuse.
    idle_timeout_s: float = 60.0


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, a header deadline around it."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self.guard, self.inner = guard, inner
        self.transport: asyncio.BaseTransport | None = None
        self.admitted = False
        self.idle = False
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.guard.open >= self.guard.limits.max_connections:
            self.guard.refused += 1
            transport.close()
            return
        self.admitted = True
        self.guard.open += 1
        self.guard.by_handler[self.inner] = self
        self.inner.connection_made(transport)
        self._arm(self.guard.limits.header_timeout_s)

    def _arm(self, seconds: float) -> None:
        self.cancel_deadline()
        self._deadline = asyncio.get_running_loop().call_later(seconds, self._too_slow)

    def request_started(self) -> None:
        self.idle = False
        self.cancel_deadline()

    def request_done(self) -> None:
        self.idle = True
        self._arm(self.guard.limits.idle_timeout_s)

    def cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self.guard.timed_out += 1
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.idle:  # the next request begins: its headers are now on the clock
            self.idle = False
            self._arm(self.guard.limits.header_timeout_s)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        self.cancel_deadline()
        self.guard.open -= 1
        self.guard.by_handler.pop(self.inner, None)
        self.inner.connection_lost(exc)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionGuard:
    def __init__(
        self, limits: HttpLimits, on_client_gone: Callable[[web.Request], None] = lambda _request: None
    ) -> None:
        self.limits = limits
        self.on_client_gone = on_client_gone
        self.open = 0
        self.refused = 0  # connections closed on arrival, over the cap
        self.timed_out = 0  # connections closed for sending headers too slowly, or idle too long
        self.by_handler: dict[Any, _Guarded] = {}

    def protocol_factory(self, factory: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(self, factory())

    async def serve(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> asyncio.Server:
        """Listens with aiohttp's server behind the guard (in place of ``web.TCPSite``)."""
        assert runner.server is not None, "call runner.setup() first"
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            self.protocol_factory(runner.server),
            host,
            port,
            ssl=ssl_context,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = self.by_handler.get(request.protocol)
        if connection is not None:
            connection.request_started()
        try:
            if request.body_exists:
                try:
                    # Read here, bounded; aiohttp keeps the bytes, so the handler's read() returns them.
                    await asyncio.wait_for(request.read(), self.limits.body_timeout_s)
                except TimeoutError:
                    response = web.json_response(
                        {"error": f"request body not received within {self.limits.body_timeout_s:g}s"}, status=408
                    )
                    response.force_close()
                    return response
            return await handler(request)
        except ConnectionResetError:
            if request.transport is not None and not request.transport.is_closing():
                raise  # not the client going away: a real error, reported as one
            log.info("client went away during %s %s", request.method, request.path)
            self.on_client_gone(request)
            return web.Response(status=CLIENT_CLOSED_REQUEST)
        finally:
            if connection is not None:
                connection.request_done()
