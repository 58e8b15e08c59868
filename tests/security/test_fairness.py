"""Tenant separation under load: a noisy tenant saturating its model on a shared agent does not
starve a quiet one.

SLO stated and asserted: while the noisy tenant keeps its model saturated (every worker it may hold
busy, its queue full, the excess refused with 429), the quiet tenant gets no 429 and its p95 stays
under 10x its idle p95 (floored at 50 ms, because an idle p95 of a few ms on a loaded two-core test
machine is mostly scheduler noise). p95 of 100 samples, not p99: one pause of the whole test process
(a full garbage collection late in a long test session, a CI neighbour) once cost a single quiet
request 195 ms, which says nothing about admission. Measured on these machines: idle ~3-10 ms, under
load ~5-25 ms; without the per-model cap the quiet p95 is near the noisy request's duration (~300 ms).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from typing import Any

from aiohttp.test_utils import TestClient

from tars_agent.tenancy import FairAdmission, model_cap
from tests.security.conftest import make_agent, serve, tars_model

NOISY_SECONDS = 0.3
QUIET_SAMPLES = 100
INFER = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[94]


async def quiet_latencies(client: TestClient, statuses: Counter[int]) -> list[float]:
    latencies = []
    for _ in range(QUIET_SAMPLES):
        started = time.perf_counter()
        response = await client.post("/v2/models/quiet/infer", json=INFER)
        await response.read()
        latencies.append(time.perf_counter() - started)
        statuses[response.status] += 1
        await asyncio.sleep(0.01)
    return latencies


async def noisy_loop(client: TestClient, statuses: Counter[int], stop: asyncio.Event) -> None:
    body = {"do": "call", "name": "operator.request", "args": {"seconds": NOISY_SECONDS}}
    while not stop.is_set():
        response = await client.post("/v1/functions/noisy:invoke", json=body)
        await response.read()
        statuses[response.status] += 1
        if response.status == 429:
            await asyncio.sleep(0.02)  # a client backing off a little, still far above capacity


async def measure(backend: Any, admission: FairAdmission | None) -> tuple[float, float, Counter[int], Counter[int]]:
    agent = make_agent(backend, workers=4, max_queue=8)
    assert await agent.ensure_loaded(tars_model("quiet", "builtin://echo", "team-quiet"))
    noisy = tars_model("noisy", "builtin://hostile", "team-noisy", capabilities=["operator.request"])
    assert await agent.ensure_loaded(noisy)
    if admission is not None:
        admission.workers = agent.config.workers
    client = await serve(agent, admission=admission)
    quiet: Counter[int] = Counter()
    loud: Counter[int] = Counter()
    try:
        await quiet_latencies(client, Counter())  # warm-up: first requests pay for lazy set-up
        idle = p95(await quiet_latencies(client, Counter()))
        stop = asyncio.Event()
        flood = [asyncio.create_task(noisy_loop(client, loud, stop)) for _ in range(24)]
        await asyncio.sleep(1.0)  # let the noisy tenant saturate first
        busy = p95(await quiet_latencies(client, quiet))
        stop.set()
        await asyncio.gather(*flood)
    finally:
        await client.close()
        agent.close()
    return idle, busy, quiet, loud


async def test_quiet_tenant_keeps_its_latency_while_a_noisy_one_saturates(backend: Any) -> None:
    idle, busy, quiet, loud = await measure(backend, None)
    print(f"quiet p95 idle {idle * 1000:.1f} ms, under noisy load {busy * 1000:.1f} ms; noisy {dict(loud)}")
    assert loud[429] > 0 and loud[200] > 0, f"the noisy tenant was not saturated: {dict(loud)}"
    assert quiet == {200: QUIET_SAMPLES}, f"the quiet tenant was refused: {dict(quiet)}"
    assert busy < max(10 * idle, 0.05), f"quiet p95 {busy * 1000:.1f} ms vs idle {idle * 1000:.1f} ms"


async def test_without_the_per_model_cap_the_quiet_tenant_waits_behind_the_noisy_one(backend: Any) -> None:
    """The control experiment: the same load with every worker open to one model; shows the SLO
    test above measures what the cap buys."""
    unfair = FairAdmission(workers=4, queue_per_model=8, per_model=4)
    _idle, busy, _quiet, loud = await measure(backend, unfair)
    assert loud[200] > 0
    assert busy > NOISY_SECONDS / 3, f"quiet p95 {busy * 1000:.1f} ms did not wait behind noisy requests"


def test_model_cap() -> None:
    assert model_cap(4, None, 1) == 4  # alone: every worker
    assert model_cap(4, None, 3) == 3  # shared: one left for the others
    assert model_cap(1, None, 3) == 1
    assert model_cap(4, 2, 3) == 2
    assert model_cap(4, 9, 3) == 4


async def test_round_robin_and_per_model_queue_bounds() -> None:
    admission = FairAdmission(workers=1, queue_per_model=2, models_loaded=lambda: 2)
    order: list[str] = []
    release = asyncio.Event()

    async def job(model: str) -> None:
        async with admission.slot(model):
            order.append(model)
            await release.wait()

    first = asyncio.create_task(job("a"))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(job(m)) for m in ("a", "a", "b", "b")]
    await asyncio.sleep(0)
    third_a = asyncio.create_task(job("a"))
    await asyncio.sleep(0)
    assert third_a.done() and type(third_a.exception()).__name__ == "Overloaded"  # a's own queue is full
    release.set()
    await asyncio.gather(first, *queued)
    assert order == ["a", "b", "a", "b", "a"] or order == ["a", "a", "b", "a", "b"], order
    assert admission.running == {} and admission.queued("a") == 0
