"""Warm pools of fresh sandboxes, and the bounded executor that runs guest calls.

A pool keeps up to ``size`` started, never-used instances of one model's guest; ``take`` hands one
out (starting one on the spot if the pool is empty) and a background thread tops the pool up. An
instance serves one request and is then closed, so no state crosses requests.

:class:`GuestExecutor` is the agent-wide admission control: at most ``workers`` calls run at once
(on threads, because a guest call blocks), at most ``max_queue`` wait; more get an Overloaded error
(HTTP 429 with Retry-After) and, once draining, Unavailable (503). A worker stays taken until its
guest has really stopped, not until its client was told of a timeout, and the executor reports how
long no worker has been freed while all are taken (the agent turns unready when that lasts).
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
from typing import Any, TypeVar

from tars_agent.capabilities import take_unavailable
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

    @property
    def prepared(self) -> PreparedGuest:
        return self._prepared

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
        """A started instance from the pool, topped up at once; from an empty pool (a model just loaded
        for a waiting request) one started now, and the pool is topped up only after its call, so the
        refill does not slow that cold start down."""
        with self._lock:
            instance = self._ready.popleft() if self._ready else None
            self._metrics.pool_size.labels(self._label).set(len(self._ready))
        if instance is None:
            return self._start()
        self._top_up()
        return instance

    def _top_up(self) -> None:
        with self._lock:
            refill = not self._refilling and not self._closed and len(self._ready) < self.size
            if refill:
                self._refilling = True
        if refill:
            self._refiller.submit(self._refill)

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
        take_unavailable()  # host calls of this call only
        try:
            return instance.handle(input_json)
        except GuestFailure as failure:
            if take_unavailable():
                raise GuestFailure(FailureReason.UNAVAILABLE, failure.public, failure.detail) from None
            raise
        finally:
            instance.close()
            self._top_up()

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
        self._saturated_since: float | None = None
        self._calls: set[Future[Any]] = set()

    async def run(self, fn: Callable[[], T], wall_timeout_s: float, on_stopped: Callable[[], None] | None = None) -> T:
        """Runs ``fn`` on a worker thread; a TIMEOUT GuestFailure after ``wall_timeout_s`` (queueing excluded).

        ``on_stopped`` runs on the event loop exactly once, when ``fn`` has finished or will never run:
        callers hold their own admission slots until then."""
        submitted = False
        try:
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
            if self.in_flight >= self.workers and self._saturated_since is None:
                self._saturated_since = time.monotonic()
            self._idle.clear()
            loop = asyncio.get_running_loop()
            answer: asyncio.Future[T] = loop.create_future()
            future: Future[T] = self._threads.submit(fn)
            submitted = True
            self._calls.add(future)
            # The slot is released when the thread really finishes, not when the client gives up:
            # a thread cannot be cancelled, and counting it as free would overcommit the workers.
            # Release and answer share one wake-up of the loop: asyncio.wrap_future and wait_for cost
            # a second one and more objects per call, a fifth of the agent's CPU per sentiment request.
            future.add_done_callback(lambda f: self._finished_on_thread(loop, f, answer, on_stopped))
        finally:
            if not submitted and on_stopped is not None:
                on_stopped()
        timer = loop.call_later(wall_timeout_s, self._time_out, future, answer)
        try:
            return await answer
        except asyncio.CancelledError:
            future.cancel()  # its client is gone: a call still queued never starts
            raise
        finally:
            timer.cancel()

    @staticmethod
    def _time_out(future: Future[T], answer: asyncio.Future[T]) -> None:
        future.cancel()  # a call still queued never starts; a running guest stops at its own limits
        if not answer.done():
            answer.set_exception(GuestFailure(FailureReason.TIMEOUT, "guest exceeded its wall-clock time limit"))

    def _finished_on_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        future: Future[T],
        answer: asyncio.Future[T],
        on_stopped: Callable[[], None] | None,
    ) -> None:
        self._calls.discard(future)
        # The loop may be gone when a timed-out guest finally stops during shutdown.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._finished, future, answer, on_stopped)

    def _finished(self, future: Future[T], answer: asyncio.Future[T], on_stopped: Callable[[], None] | None) -> None:
        self._release(on_stopped)
        if answer.done() or future.cancelled():  # timed out or given up: nobody waits for it
            return
        error = future.exception()
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(future.result())

    def _release(self, on_stopped: Callable[[], None] | None) -> None:
        self._slots.release()
        self.in_flight -= 1
        self._saturated_since = None
        if self.in_flight == 0:
            self._idle.set()
        if on_stopped is not None:
            on_stopped()

    def saturated_for(self) -> float:
        """Seconds since every worker was taken with none freed since (0 while one is free)."""
        since = self._saturated_since
        return 0.0 if since is None else time.monotonic() - since

    def guests_running(self) -> int:
        """Calls still running on worker threads (safe from any thread, even after the loop closed)."""
        return sum(not call.done() for call in list(self._calls))

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
