"""Hostile guests against real Wasmtime sandboxes: each attempt is stopped, with the right reason."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import pytest

from tars_agent.agent import Agent
from tars_agent.sandbox.base import FailureReason, GuestFailure, SandboxBackend

from .conftest import backend_on_path, tars_model


@pytest.fixture(scope="module", params=["native", "python"])
def backend(request: pytest.FixtureRequest, guests: dict[str, Any]) -> SandboxBackend:
    """Every test here runs on both Wasmtime paths: the native one and wasmtime-py."""
    shared = backend_on_path(request.param)
    for path in guests.values():
        shared.load_component(path)
    return shared


# One limit each: under a loaded machine the 300 ms CPU deadline of "tight" could stop a memory bomb or
# an output flood before it reached the limit the test is about (seen: TIMEOUT where MEMORY was due).
ONE_LIMIT_MODELS = [
    tars_model("small-memory", "builtin://hostile", limits={"memoryMiB": 64}),
    tars_model("small-output", "builtin://hostile", limits={"outputBytes": 4096}),
]


@pytest.fixture
async def one_limit_agent(agent: Agent) -> Agent:
    for model in ONE_LIMIT_MODELS:
        assert await agent.ensure_loaded(model), agent.repository.failed
    return agent


async def call(agent: Agent, name: str, payload: dict[str, Any]) -> Any:
    model = agent.repository.find(name)
    assert model is not None
    return json.loads(await agent.repository.invoke(model, json.dumps(payload)))


async def failure(agent: Agent, name: str, payload: dict[str, Any]) -> GuestFailure:
    with pytest.raises(GuestFailure) as caught:
        await call(agent, name, payload)
    return caught.value


async def test_echo_round_trip(agent: Agent) -> None:
    assert await call(agent, "echo", {"hello": ["world", 1]}) == {"hello": ["world", 1]}


async def test_no_state_survives_between_requests(agent: Agent) -> None:
    results = [await call(agent, "hostile", {"do": "state"}) for _ in range(5)]
    assert results == [{"calls": 1}] * 5


async def test_host_files_are_invisible(agent: Agent, tmp_path: Any) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    for path in ("/etc/passwd", str(secret), "/proc/self/environ"):
        result = await call(agent, "hostile", {"do": "read_file", "path": path})
        assert result["blocked"] is True, result
        assert "host secret" not in json.dumps(result)


async def test_guest_cannot_leave_files_behind(agent: Agent) -> None:
    result = await call(agent, "hostile", {"do": "write_file", "path": "/tmp/tars-guest-was-here"})
    assert result["blocked"] is True
    import os

    assert not os.path.exists("/tmp/tars-guest-was-here")


async def test_no_sockets_even_to_a_listening_host_port(agent: Agent) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        result = await call(agent, "hostile", {"do": "socket", "host": "127.0.0.1", "port": port})
        assert result["blocked"] is True, result
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


async def test_environment_is_empty(agent: Agent) -> None:
    assert await call(agent, "hostile", {"do": "env"}) == {"env": {}}


async def test_memory_limit_stops_allocation(one_limit_agent: Agent) -> None:
    failed = await failure(one_limit_agent, "small-memory", {"do": "allocate", "mib": 512})
    assert failed.reason is FailureReason.MEMORY
    # A modest allocation under the limit works in the next (fresh) sandbox.
    assert await call(one_limit_agent, "small-memory", {"do": "allocate", "mib": 8}) == {"chunks": 8}


async def test_infinite_loop_is_interrupted_by_cpu_deadline(agent: Agent) -> None:
    started = time.perf_counter()
    failed = await failure(agent, "tight", {"do": "loop"})
    elapsed = time.perf_counter() - started
    assert failed.reason is FailureReason.TIMEOUT
    assert elapsed < 2.0, elapsed  # cpuTimeMs is 300; the wall limit (3 s) was not what stopped it


async def test_blocking_host_call_hits_wall_timeout(agent: Agent) -> None:
    started = time.perf_counter()
    failed = await failure(agent, "hostile", {"do": "call", "name": "operator.request", "args": {"seconds": 5}})
    assert failed.reason is FailureReason.TIMEOUT
    assert 2.5 < time.perf_counter() - started < 4.5


async def test_output_flood_is_refused(one_limit_agent: Agent) -> None:
    failed = await failure(one_limit_agent, "small-output", {"do": "flood", "bytes": 100_000})
    assert failed.reason is FailureReason.OUTPUT
    assert await call(one_limit_agent, "small-output", {"do": "flood", "bytes": 100}) == {"data": "x" * 100}


async def test_stdout_flood_goes_nowhere(agent: Agent) -> None:
    assert await call(agent, "hostile", {"do": "print_flood", "chunks": 50}) == {"printed": True}


async def test_crash_reports_error_without_detail(agent: Agent) -> None:
    failed = await failure(agent, "hostile", {"do": "crash"})
    assert failed.reason is FailureReason.ERROR
    assert failed.public == "guest crashed"
    assert "guest bug" in failed.detail  # kept for the log, never sent to clients


async def test_guest_error_result_is_passed_on(agent: Agent) -> None:
    failed = await failure(agent, "hostile", {"do": "no-such-action"})
    assert failed.reason is FailureReason.REJECTED
    assert failed.public == "unknown action: no-such-action"


async def test_allowed_capability_is_answered(agent: Agent) -> None:
    result = await call(agent, "hostile", {"do": "call", "name": "clock.now"})
    assert abs(result["result"]["unix"] - time.time()) < 60


async def test_capability_outside_allowlist_is_refused_counted_and_audited(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tars_agent.audit"):
        result = await call(agent, "hostile", {"do": "call", "name": "log.write", "args": {"message": "hi"}})
        unknown = await call(agent, "hostile", {"do": "call", "name": "fs.read", "args": {}})
        allowed = await call(agent, "hostile", {"do": "call", "name": "clock.now"})
    assert result == {"blocked": True, "error": "capability log.write is not allowed for model default/hostile"}
    assert unknown["blocked"] is True
    assert "result" in allowed
    audit = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tars_agent.audit"]
    assert [(a["model"], a["capability"], a["outcome"]) for a in audit] == [
        ("default/hostile", "log.write", "denied"),
        ("default/hostile", "fs.read", "denied"),
        ("default/hostile", "clock.now", "ok"),
    ]
    assert all(a["duration_ms"] >= 0 for a in audit)
    counted = agent.metrics.host_calls.labels("default/hostile", "log.write", "denied")._value.get()
    assert counted == 1


async def test_misbehaving_neighbours_do_not_disturb_other_requests(one_limit_agent: Agent) -> None:
    agent = one_limit_agent
    hostile = [
        asyncio.create_task(call(agent, model, payload))
        for model, payload in [
            ("tight", {"do": "loop"}),
            ("small-memory", {"do": "allocate", "mib": 512}),
            ("small-output", {"do": "flood", "bytes": 200_000}),
        ]
    ]
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    echoes = await asyncio.gather(*(call(agent, "echo", {"n": i}) for i in range(12)))
    # The echoes ran on the free worker while the hostile calls held theirs (one echo is a few ms).
    assert time.perf_counter() - started < 1.5
    assert echoes == [{"n": i} for i in range(12)]
    outcomes = await asyncio.gather(*hostile, return_exceptions=True)
    reasons = [o.reason for o in outcomes if isinstance(o, GuestFailure)]
    assert sorted(reasons) == sorted([FailureReason.TIMEOUT, FailureReason.MEMORY, FailureReason.OUTPUT])


async def test_every_request_gets_a_fresh_sandbox_from_the_warm_pool(agent: Agent) -> None:
    model = agent.repository.find("echo")
    assert model is not None
    await asyncio.gather(*(call(agent, "echo", {"i": i}) for i in range(10)))
    for _ in range(100):
        if model.pool.ready_count() == model.pool.size:
            break
        await asyncio.sleep(0.02)
    assert model.pool.ready_count() == model.pool.size
