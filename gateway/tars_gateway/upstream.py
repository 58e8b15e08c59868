"""One bounded attempt at an agent.

The session bounds the connect; this bounds the answer. An agent that is stopped (SIGSTOP, a frozen
VM, a wedged event loop) still completes TCP handshakes from the kernel's backlog and then never
answers, so the connect timeout alone does not catch it. A slow answer is not proof of a hung agent
either: text generation can take seconds. So while an answer is slow, the agent's liveness route is
asked, with a short timeout: an agent that answers it is working on the request; one that does not is
hung, and the attempt is abandoned at once for another agent. A hard cap bounds the rest.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from aiohttp import web

# Passed back to the caller: Allow makes a 405 say what is allowed.
RETURNED_HEADERS = ("content-type", "retry-after", "allow", "inference-header-content-length", "x-tars-cold-start")


class AttemptFailed(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome, self.detail = outcome, detail


@dataclass(frozen=True)
class AttemptBounds:
    answer_s: float  # the hard cap on one attempt
    probe_after_s: float  # a slower answer gets its agent's liveness checked, this often
    # Longer than a busy agent needs to answer it: on a loaded machine a slow probe is not a hung agent.
    probe_timeout_s: float = 2.0


async def alive(session: aiohttp.ClientSession, base: str, timeout_s: float) -> bool:
    try:
        async with session.get(f"{base}/v2/health/live", timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            return r.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


async def _exchange(
    session: aiohttp.ClientSession, method: str, url: str, body: bytes, headers: dict[str, str]
) -> web.Response:
    async with session.request(method, url, data=body, headers=headers) as upstream:
        payload = await upstream.read()
        kept = {k: v for k, v in upstream.headers.items() if k.lower() in RETURNED_HEADERS}
        return web.Response(status=upstream.status, body=payload, headers=kept)


async def attempt(
    session: aiohttp.ClientSession,
    base: str,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    bounds: AttemptBounds,
) -> web.Response:
    """The agent's answer; AttemptFailed("timeout" | "hung") when it does not come in time;
    aiohttp.ClientConnectionError when the agent cannot be reached."""
    exchange = asyncio.ensure_future(_exchange(session, method, f"{base}{path}", body, headers))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bounds.answer_s
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AttemptFailed("timeout", f"agent gave no answer within {bounds.answer_s:g}s")
            done, _ = await asyncio.wait({exchange}, timeout=min(bounds.probe_after_s, remaining))
            if done:
                return exchange.result()
            if not await alive(session, base, bounds.probe_timeout_s) and not exchange.done():
                raise AttemptFailed("hung", "agent stopped answering its liveness probe")
    finally:
        exchange.cancel()
