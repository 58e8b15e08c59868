"""Hostile user functions, in Python and in Rust, against a real agent: each attempt is stopped, and
the agent says why (rejected, memory, timeout, output), without the attempt reaching the host."""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tars_agent.agent import Agent
from tars_agent.sandbox.base import FailureReason, GuestFailure, SandboxBackend
from tests.agent.conftest import backend_on_path
from tests.functions.conftest import HOSTILE_PYTHON, ConfigMaps, SharedBackend, function_model, make_agent

LANGUAGES = ["python", "rust"]


@pytest.fixture(scope="module", params=["native", "python"])
def backend(request: pytest.FixtureRequest) -> SandboxBackend:
    """Every test here runs on both Wasmtime paths: the native one and wasmtime-py."""
    return backend_on_path(request.param)


@pytest.fixture
async def hostile(backend: SharedBackend, components: dict[str, Path]) -> AsyncIterator[Agent]:
    """One agent serving the hostile function twice per language: for tenant-a and for tenant-b."""
    agent = make_agent(backend, ConfigMaps())
    for tenant in ("tenant-a", "tenant-b"):
        for model in (
            function_model("python", tenant, function={"code": HOSTILE_PYTHON}, capabilities=["clock.now"]),
            function_model("rust", tenant, source=f"file://{components['hostile']}", capabilities=["clock.now"]),
        ):
            assert await agent.ensure_loaded(model), agent.repository.failed
    yield agent
    agent.close()


async def call(agent: Agent, name: str, payload: dict[str, Any], tenant: str = "tenant-a") -> Any:
    model = next(m for key, m in agent.repository.models.items() if key == (tenant, name))
    return json.loads(await agent.repository.invoke(model, json.dumps(payload)))


async def failure(agent: Agent, name: str, payload: dict[str, Any], tenant: str = "tenant-a") -> GuestFailure:
    with pytest.raises(GuestFailure) as caught:
        await call(agent, name, payload, tenant)
    return caught.value


@pytest.mark.parametrize("language", LANGUAGES)
async def test_host_files_are_not_there(hostile: Agent, language: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    for path in ("/etc/passwd", str(secret)):
        stopped = await failure(hostile, language, {"op": "read_file", "path": path})
        assert stopped.reason == FailureReason.REJECTED  # the guest ran; the sandbox said no
        assert "No such file or directory" in stopped.public or "not found" in stopped.public.lower(), stopped.public
        assert "host secret" not in stopped.public and "root:" not in stopped.public


@pytest.mark.parametrize("language", LANGUAGES)
async def test_no_socket_reaches_a_listening_host_port(hostile: Agent, language: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        stopped = await failure(hostile, language, {"op": "socket", "address": address})
        assert stopped.reason == FailureReason.REJECTED  # the guest ran; the sandbox said no
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected


@pytest.mark.parametrize("language", LANGUAGES)
async def test_memory_bomb_hits_the_memory_limit(hostile: Agent, language: str) -> None:
    stopped = await failure(hostile, language, {"op": "memory_bomb"})
    assert stopped.reason == FailureReason.MEMORY, (stopped.public, stopped.detail[-500:])


@pytest.mark.parametrize("language", LANGUAGES)
async def test_endless_loop_hits_the_cpu_limit(hostile: Agent, language: str) -> None:
    stopped = await failure(hostile, language, {"op": "spin"})
    assert stopped.reason == FailureReason.TIMEOUT
    # The sandbox is gone, not the agent: the next request is served.
    assert (await call(hostile, language, {"op": "recall"} if language == "python" else {"op": "ok"})) is not None


@pytest.mark.parametrize("language", LANGUAGES)
async def test_output_flood_hits_the_output_limit(hostile: Agent, language: str) -> None:
    stopped = await failure(hostile, language, {"op": "flood", "bytes": 1 << 20})
    assert stopped.reason == FailureReason.OUTPUT


@pytest.mark.parametrize("language", LANGUAGES)
async def test_capability_not_allowed_is_refused(hostile: Agent, language: str, caplog: Any) -> None:
    with caplog.at_level("INFO", logger="tars_agent.audit"):
        stopped = await failure(hostile, language, {"op": "capability", "name": "knowledge.query"})
    assert stopped.reason == FailureReason.REJECTED  # the guest ran; the sandbox said no
    assert f"capability knowledge.query is not allowed for model tenant-a/{language}" in stopped.public
    audit = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tars_agent.audit"]
    assert {"model": f"tenant-a/{language}", "capability": "knowledge.query", "outcome": "denied"}.items() <= audit[
        -1
    ].items()


async def test_python_tenant_cannot_read_what_a_previous_request_left(hostile: Agent) -> None:
    secret = secrets.token_hex(16)
    assert await call(hostile, "python", {"op": "remember", "secret": secret}, tenant="tenant-a") == {
        "remembered": True
    }
    for tenant in ("tenant-b", "tenant-a"):
        assert await call(hostile, "python", {"op": "recall"}, tenant=tenant) == {"remembered": None}


async def test_rust_tenant_finds_nothing_of_a_previous_request_anywhere_in_memory(hostile: Agent) -> None:
    secret = secrets.token_bytes(24)
    remembered = await call(hostile, "rust", {"op": "remember", "secret_hex": secret.hex()}, tenant="tenant-a")
    assert remembered == {"remembered": 24}
    # The scanner proves it can see: within one request the secret is in its static and on its heap.
    for tenant in ("tenant-b", "tenant-a"):
        scan = await call(hostile, "rust", {"op": "scan", "secret_hex": secret.hex()}, tenant=tenant)
        assert scan == {"found": 0, "static_matches": False}, tenant
