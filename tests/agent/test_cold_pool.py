"""A model loaded for a waiting request (a cold start) serves it first and fills its warm pool after,
so starting the pool's instances does not slow that first answer down (issue 22)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tars_agent.metrics import AgentMetrics
from tars_agent.pool import SandboxPool
from tars_agent.sandbox.base import GuestSource, Limits

from .conftest import SharedBackend


def test_an_empty_pool_is_topped_up_only_after_the_call(backend: SharedBackend, guests: dict[str, Path]) -> None:
    prepared = backend.prepare(GuestSource(component=guests["echo"]), lambda n, a: "{}", Limits())
    refiller = ThreadPoolExecutor(max_workers=1)
    pool = SandboxPool(prepared, 3, refiller, AgentMetrics(), "default/cold")
    try:
        instance = pool.take()  # nothing started yet: one now, and no refill beside the call
        time.sleep(0.3)
        assert pool.ready_count() == 0
        assert json.loads(instance.handle(json.dumps({"n": 1}))) == {"n": 1}
        instance.close()
        assert json.loads(pool.run(json.dumps({"n": 2}))) == {"n": 2}  # the refill starts after this call
        deadline = time.monotonic() + 30
        while pool.ready_count() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.ready_count() == 3
        pool.take().close()  # a warm take tops the pool up again at once
        deadline = time.monotonic() + 30
        while pool.ready_count() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.ready_count() == 3
    finally:
        pool.close()
        refiller.shutdown()
