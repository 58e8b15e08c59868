"""Each model gets a fair share of the workers under contention (issue 17, item 9)."""

from __future__ import annotations

import asyncio
import statistics
import time

from aiohttp.test_utils import TestClient, TestServer

from tars_agent.server import create_app
from tars_agent.tenancy import ACTIVE_WINDOW_S, FairAdmission, fair_share

from .conftest import SharedBackend, make_agent, tars_model


def test_fair_share_splits_the_cores() -> None:
    assert fair_share(workers=4, cores=2, active=2) == 1
    assert fair_share(workers=8, cores=8, active=2) == 4
    assert fair_share(workers=4, cores=2, active=5) == 1  # never below one


async def test_a_busy_model_shrinks_to_its_share_while_another_has_work() -> None:
    now = [0.0]
    admission = FairAdmission(workers=4, queue_per_model=16, models_loaded=lambda: 2, cores=2, clock=lambda: now[0])
    for _ in range(3):
        await admission.acquire("burner")
    assert admission.running == {"burner": 3}  # alone with work: all but one worker
    await admission.acquire("neighbour")
    waiting = asyncio.ensure_future(admission.acquire("burner"))
    for _ in range(3):
        admission.release("burner")
    await asyncio.sleep(0)
    assert admission.running == {"neighbour": 1, "burner": 1}  # the burner's share: one core of two
    admission.release("neighbour")
    await asyncio.sleep(0)
    assert waiting.done() and admission.running == {"burner": 1}
    blocked = asyncio.ensure_future(admission.acquire("burner"))
    await asyncio.sleep(0)
    assert not blocked.done()  # the neighbour asked within the window: the burner keeps to its share
    now[0] += ACTIVE_WINDOW_S + 0.1
    admission.release("burner")
    await asyncio.sleep(0)
    assert blocked.done()
    await admission.acquire("burner")
    await admission.acquire("burner")  # alone again: every worker but one
    assert admission.running == {"burner": 3}


async def test_cpu_burners_slow_a_neighbour_less_than_twice(backend: SharedBackend) -> None:
    """The demo's resource-exhaustion check in small: 8 concurrent CPU burners beside a neighbour."""
    agent = make_agent(backend, workers=4)
    for model in (tars_model("echo", "builtin://echo"), tars_model("hostile", "builtin://hostile")):
        assert await agent.ensure_loaded(model)
    admission = FairAdmission(agent.config.workers, agent.config.max_queue, models_loaded=lambda: 2)
    client = TestClient(TestServer(create_app(agent, admission=admission)))
    await client.start_server()
    burning_beside_neighbour: list[int] = []

    async def neighbour_p50(samples: int = 60) -> float:
        latencies = []
        for _ in range(samples):
            started = time.perf_counter()
            resp = await client.post("/v1/functions/echo:invoke", json={"text": "hello"})
            assert resp.status == 200
            await resp.read()
            latencies.append(time.perf_counter() - started)
            burning_beside_neighbour.append(admission.running.get("default/hostile", 0))
        return statistics.median(latencies)

    stop = asyncio.Event()

    async def burner() -> None:
        while not stop.is_set():  # each call spins until its CPU deadline (1.5 s)
            await (await client.post("/v1/functions/hostile:invoke", json={"do": "loop"})).read()

    try:
        await neighbour_p50(10)  # warm up
        before = await neighbour_p50()
        burners = [asyncio.create_task(burner()) for _ in range(8)]
        await asyncio.sleep(1.0)
        during = await neighbour_p50()
        stop.set()
        await asyncio.gather(*burners)
    finally:
        await client.close()
        agent.close()
    # The slowdown is measured and printed (and bounded by the demo's security check, a benchmark); on
    # a shared machine a timing bound here would test the neighbours' load, so the assertion is on the
    # mechanism: while the neighbour has work, the burners never hold more than their share.
    print(f"neighbour p50 {before * 1000:.1f} ms alone, {during * 1000:.1f} ms beside 8 burners")
    share = fair_share(workers=4, cores=admission.cores, active=2)
    assert max(burning_beside_neighbour) <= share, (burning_beside_neighbour, share)
    assert max(burning_beside_neighbour) >= 1, "the burners were running"
