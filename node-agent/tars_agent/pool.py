"""Warm pools of fresh sandboxes, and the bounded executor that runs guest calls.

A pool keeps up to ``size`` started, never-used instances of one model's guest; ``take`` hands one
out (starting one on the spot if the pool is empty) and a background thread tops the pool up. An
instance serves one request and is then closed, so no state crosses requests.

:class:`GuestExecutor` is the agent-wide admission control: at most ``workers`` calls run at once
(on threads, because a guest call blocks), at most ``max_queue`` wait; more get an Overloaded error
(HTTP 429 with Retry-After) and, once draining, Unavailable (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from tars_agent.metrics import AgentMetrics
from tars_agent.sandbox.base import FailureReason, GuestFailure, GuestInstance, PreparedGuest

log = logging.getLogger(__name__)
T = TypeVar("T")


class SandboxPool:
    def __init__(
        self, prepared: PreparedGuest, size: int, refiller: ThreadPoolExecutor, metrics: AgentMetrics, label: str
    ) -> None:
        self._prepared = prepared
        self.size = size
        self._refiller = refiller
        self._metrics = metrics
        self._label = label
        self._ready: deque[GuestInstance] = deque()
        self._lock = threading.Lock()
        self._refilling = False
        self._closed = False

    def _start(self) -> GuestInstance:
        started = time.perf_counter()
        instance = self._prepared.instantiate()
        self._metrics.sandbox_start.labels(self._label).observe(time.perf_counter() - started)
        return instance

    def ready_count(self) -> int:
        return len(self._ready)

    def fill(self) -> None:
        """Starts instances until the pool is full (blocking; used at load time)."""
        while not self._closed and len(self._ready) < self.size:
            instance = self._start()
            with self._lock:
                self._ready.append(instance)
            self._metrics.pool_size.labels(self._label).set(len(self._ready))

    def take(self) -> GuestInstance:
        with self._lock:
            instance = self._ready.popleft() if self._ready else None
            self._metrics.pool_size.labels(self._label).set(len(self._ready))
            refill = not self._refilling and not self._closed and self.size > 0
            if refill:
                self._refilling = True
        if refill:
            self._refiller.submit(self._refill)
        return instance if instance is not None else self._start()

    def _refill(self) -> None:
        try:
            self.fill()
        except Exception:
            log.exception("refilling the warm pool of %s failed", self._label)
        finally:
            with self._lock:
                self._refilling = False

    def run(self, input_json: str) -> str:
        """One guest call in a fresh instance (blocking)."""
        instance = self.take()
        try:
            return instance.handle(input_json)
        finally:
            instance.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ready, self._ready = list(self._ready), deque()
        for instance in ready:
            instance.close()
        self._metrics.pool_size.labels(self._label).set(0)


class Overloaded(Exception):
    """Too many requests wait already; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__("too many requests")
        self.retry_after = retry_after


class Unavailable(Exception):
    """The agent is draining (shutting down) and takes no new work."""


class GuestExecutor:
    def __init__(self, workers: int, max_queue: int) -> None:
        self.workers = workers
        self.max_queue = max_queue
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="guest")
        self._slots = asyncio.Semaphore(workers)
        self.queued = 0
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    async def run(self, fn: Callable[[], T], wall_timeout_s: float) -> T:
        """Runs ``fn`` on a worker thread; a TIMEOUT GuestFailure after ``wall_timeout_s`` (queueing excluded)."""
        if self.draining:
            raise Unavailable()
        if self.queued >= self.max_queue and self._slots.locked():
            raise Overloaded()
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        self.in_flight += 1
        self._idle.clear()
        loop = asyncio.get_running_loop()
        future: Future[T] = self._threads.submit(fn)
        # The slot is released when the thread really finishes, not when the client gives up:
        # a thread cannot be cancelled, and counting it as free would overcommit the workers.
        future.add_done_callback(lambda _f: self._release_from_thread(loop))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), wall_timeout_s)
        except TimeoutError:
            raise GuestFailure(FailureReason.TIMEOUT, "guest exceeded its wall-clock time limit") from None

    def _release_from_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        # The loop may be gone when a timed-out guest finally stops during shutdown.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        self._slots.release()
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Stops admitting work and waits for what runs; False if it did not finish in time."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
