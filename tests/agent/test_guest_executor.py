"""The agent's GuestExecutor on real threads: answers, errors, time limits, clients that give up.

A call wakes the event loop once (release and answer together): the second wake-up asyncio.wrap_future
added cost about a fifth of the agent's CPU per sentiment request.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tars_agent.pool import GuestExecutor
from tars_agent.sandbox.base import FailureReason, GuestFailure


class Stops:
    """Counts on_stopped calls."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1

    async def first(self) -> None:
        """Waits (up to 4 s) for the first on_stopped call."""
        for _ in range(200):
            if self.count:
                return
            await asyncio.sleep(0.02)


async def test_a_call_answers_and_wakes_the_loop_once(monkeypatch: pytest.MonkeyPatch) -> None:
    executor = GuestExecutor(workers=2, max_queue=4)
    loop = asyncio.get_running_loop()
    wakeups = 0
    original = loop.call_soon_threadsafe

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal wakeups
        wakeups += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
    stops = Stops()
    for i in range(20):
        assert await executor.run(lambda i=i: i * 2, 5.0, stops) == i * 2
    assert wakeups == 20 and stops.count == 20
    assert executor.in_flight == 0 and executor.guests_running() == 0


async def test_errors_reach_the_caller_and_free_the_worker() -> None:
    executor = GuestExecutor(workers=1, max_queue=4)
    stops = Stops()

    def fails() -> str:
        raise GuestFailure(FailureReason.REJECTED, '{"error": "text: must be a string"}')

    with pytest.raises(GuestFailure) as caught:
        await executor.run(fails, 5.0, stops)
    assert caught.value.reason is FailureReason.REJECTED
    assert await executor.run(lambda: "next", 5.0) == "next"
    assert stops.count == 1 and executor.in_flight == 0


async def test_a_timed_out_call_holds_its_worker_until_it_stops() -> None:
    executor = GuestExecutor(workers=1, max_queue=4)
    stops = Stops()
    release = threading.Event()
    with pytest.raises(GuestFailure) as caught:
        await executor.run(lambda: release.wait(30), 0.2, stops)
    assert caught.value.reason is FailureReason.TIMEOUT
    assert executor.in_flight == 1 and stops.count == 0  # the thread still runs
    release.set()
    await stops.first()
    assert stops.count == 1 and executor.in_flight == 0


async def test_a_call_whose_client_gave_up_before_it_started_never_runs() -> None:
    executor = GuestExecutor(workers=1, max_queue=4)
    # The thread pool's one thread is held outside the executor's admission, so the next call queues.
    blocker = threading.Event()
    executor._threads.submit(blocker.wait, 30)
    ran = threading.Event()
    stops = Stops()
    call = asyncio.ensure_future(executor.run(ran.set, 30.0, stops))
    await asyncio.sleep(0.1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    blocker.set()
    await stops.first()
    assert stops.count == 1 and executor.in_flight == 0
    await asyncio.sleep(0.1)
    assert not ran.is_set()
