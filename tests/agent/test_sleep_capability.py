"""clock.sleep and the latency-bound test guest (issue 22): a wait that parks a worker, burns no CPU,
is granted only by the model's allowlist and ends at the request's deadline."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tars_agent.agent import Agent
from tars_agent.assembly import sleep_bundle
from tars_agent.capabilities import CallContext, CapabilityError, ModelKey, default_registry, request_deadline
from tars_agent.sandbox.base import FailureReason, GuestFailure

from .conftest import SharedBackend, make_agent, tars_model

OIP = {"inputs": [{"name": "sleep_ms", "datatype": "INT32", "shape": [1], "data": [300]}]}


@pytest.fixture
async def sleeper(backend: SharedBackend) -> AsyncIterator[Agent]:
    agent = make_agent(backend)
    agent.catalog.builtins["sleep"] = sleep_bundle
    for model in (
        tars_model("sleep", "builtin://sleep", capabilities=["clock.sleep"]),
        tars_model("not-allowed", "builtin://sleep"),
    ):
        assert await agent.ensure_loaded(model), agent.repository.failed
    yield agent
    agent.close()


async def run(agent: Agent, name: str, payload: dict[str, Any]) -> Any:
    model = agent.repository.find(name)
    assert model is not None
    return json.loads(await agent.repository.invoke(model, json.dumps(payload)))


async def test_the_guest_waits_in_the_host_without_burning_cpu(sleeper: Agent) -> None:
    """CPU time of the worker thread that runs the guest (the guest and its host calls run there), so
    other threads of the test process do not count."""
    model = sleeper.repository.find("sleep")
    assert model is not None

    def call() -> tuple[str, float, float]:
        cpu, wall = time.thread_time(), time.perf_counter()
        with request_deadline(5.0):
            answer = model.pool.run(json.dumps({"sleep_ms": 1000}))
        return answer, time.thread_time() - cpu, time.perf_counter() - wall

    answer, cpu, wall = await sleeper.executor.run(call, 10.0)
    assert json.loads(answer) == {"slept_ms": 1000}
    assert wall >= 1.0
    assert cpu < 0.5, f"a 1 s wait used {cpu:.2f} s of CPU: it spins"


async def test_ten_concurrent_waits_overlap(sleeper: Agent) -> None:
    """Four workers, ten 300 ms waits: three rounds of waiting, not ten, and no CPU spent on them."""
    wall = time.perf_counter()
    answers = await asyncio.gather(*(run(sleeper, "sleep", OIP) for _ in range(10)))
    wall = time.perf_counter() - wall
    assert all(a["outputs"][0]["data"] == [300] for a in answers)
    assert wall >= math.ceil(10 / sleeper.config.workers) * 0.3


async def test_only_models_that_allow_it_may_sleep(sleeper: Agent) -> None:
    with pytest.raises(GuestFailure) as refused:
        await run(sleeper, "not-allowed", {"sleep_ms": 10})
    assert refused.value.reason is FailureReason.REJECTED
    assert "not allowed" in refused.value.public
    counted = sleeper.metrics.host_calls.labels("default/not-allowed", "clock.sleep", "denied")._value.get()
    assert counted == 1


async def test_a_wait_stops_at_the_request_deadline(sleeper: Agent) -> None:
    """TEST_LIMITS: 1.5 s of guest time, so a 60 s wait is cut before that and the worker is free again."""
    started = time.perf_counter()
    with pytest.raises(GuestFailure) as cut:
        await run(sleeper, "sleep", {"sleep_ms": 60_000})
    assert time.perf_counter() - started < 10
    assert "deadline" in cut.value.public
    assert sleeper.executor.guests_running() == 0


def test_sleep_arguments_are_checked_and_bounded_by_the_deadline() -> None:
    sleep = default_registry().get("clock.sleep")
    assert sleep is not None
    ctx = CallContext(ModelKey("default", "m"))
    for bad in ({"ms": -1}, {"ms": "soon"}, {"ms": float("nan")}, {}):
        with pytest.raises((KeyError, TypeError, ValueError)):
            sleep(ctx, bad)
    assert sleep(ctx, {"ms": 20}) == {"slept_ms": 20}
    started = time.perf_counter()
    with request_deadline(0.2), pytest.raises(CapabilityError, match="deadline"):
        sleep(ctx, {"ms": 30_000})
    assert 0.15 <= time.perf_counter() - started < 5
