"""Guests that try to wait (sleep, select, a sleep loop) against real sandboxes and a real agent process.

Issue 17, item 1: such guests used to block worker threads inside the host past their wall-clock limit,
hand their admission slot back anyway, leave the agent ready while wedged, and make SIGTERM hang.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tars_agent.agent import Agent
from tars_agent.capabilities import ModelKey
from tars_agent.sandbox.base import FailureReason
from tars_agent.server import create_app
from tars_agent.tenancy import FairAdmission
from tars_guests.testapps import HOSTILE_APP

from .conftest import SharedBackend, make_agent, tars_model
from .test_isolation import call, failure
from .test_main import agent_command, free_port


@pytest.mark.parametrize("how", ["sleep", "poll"])
async def test_a_guest_cannot_wait_in_the_host(agent: Agent, how: str) -> None:
    started = time.perf_counter()
    result = await call(agent, "hostile", {"do": how, "seconds": 600})
    assert time.perf_counter() - started < 2.0
    assert result["waited_s"] < 1.0, result


async def test_waiting_in_a_loop_spends_the_cpu_budget(agent: Agent) -> None:
    started = time.perf_counter()
    failed = await failure(agent, "tight", {"do": "sleep_forever"})
    assert failed.reason is FailureReason.TIMEOUT
    assert time.perf_counter() - started < 2.0  # cpuTimeMs 300 stopped it, well before the 3 s wall limit
    assert agent.executor.guests_running() == 0


async def test_admission_slot_is_held_until_the_guest_stops(backend: SharedBackend) -> None:
    """A host call still running after its client was told of the timeout keeps its model's slot."""
    agent = make_agent(backend)
    admission = FairAdmission(agent.config.workers, 4, models_loaded=lambda: 2)
    model = tars_model("hostile", "builtin://hostile", capabilities=["operator.request"])
    assert await agent.ensure_loaded(model)
    client = TestClient(TestServer(create_app(agent, admission=admission)))
    await client.start_server()
    try:
        slow = {"do": "call", "name": "operator.request", "args": {"seconds": 4.5}}
        resp = await client.post("/v1/functions/hostile:invoke", json=slow)
        assert resp.status == 500 and (await resp.json())["reason"] == "timeout"  # wall limit is 3 s
        assert admission.running == {"default/hostile": 1}
        assert agent.executor.guests_running() == 1
        await asyncio.sleep(2.0)
        assert admission.running == {} and agent.executor.guests_running() == 0
    finally:
        await client.close()
        agent.close()


async def test_agent_is_unready_while_no_worker_has_been_freed(backend: SharedBackend) -> None:
    agent = make_agent(backend, workers=2, unready_after_saturated_s=1.0)
    model = tars_model("hostile", "builtin://hostile", capabilities=["operator.request"])
    assert await agent.ensure_loaded(model)
    loaded = agent.repository.find("hostile")
    assert loaded is not None
    slow = json.dumps({"do": "call", "name": "operator.request", "args": {"seconds": 2.5}})
    try:
        calls = [asyncio.ensure_future(agent.repository.invoke(loaded, slow)) for _ in range(2)]
        await asyncio.sleep(0.5)
        assert agent.ready(), "taken workers alone do not make an agent unready"
        await asyncio.sleep(1.0)
        assert not agent.ready(), "no worker freed for over a second"
        await asyncio.gather(*calls, return_exceptions=True)  # the CPU deadline fires once the call returns
        assert agent.ready()
    finally:
        agent.close()


HOSTILE_YAML = """\
apiVersion: tars.hyperlight.dev/v1alpha1
kind: TarsModel
metadata: {name: %(name)s}
spec:
  nodeRef: {name: ignored-in-standalone}
  kind: function
  source: %(source)s
  capabilities: [clock.now]
"""


def _post(url: str, body: dict[str, Any], timeout: float) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _ready(base: str) -> int:
    try:
        with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:  # not listening yet
        return 0


def test_blocking_guests_do_not_wedge_a_real_agent(tmp_path: Path, guests: dict[str, Path]) -> None:
    for name, source in (("hostile", f"file://{HOSTILE_APP}"), ("echo", "builtin://echo")):
        (tmp_path / f"{name}.yaml").write_text(HOSTILE_YAML % {"name": name, "source": source})
    port = free_port()
    proc = subprocess.Popen(
        agent_command(
            "--standalone",
            *("--model", str(tmp_path / "hostile.yaml"), "--model", str(tmp_path / "echo.yaml")),
            *("--backend", "wasmtime", "--host", "127.0.0.1", "--port", str(port), "--warm-pool", "1"),
            *("--model-root", str(HOSTILE_APP.parent)),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while _ready(base) != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "agent did not become ready"
            time.sleep(0.3)

        async def eight_blocking_requests() -> list[tuple[int, Any]]:
            actions = [{"do": how, "seconds": 600} for how in ("sleep", "poll", "sleep_forever", "sleep")] * 2
            return await asyncio.gather(
                *(asyncio.to_thread(_post, f"{base}/v1/functions/hostile:invoke", a, 30) for a in actions)
            )

        started = time.monotonic()
        answers = asyncio.run(eight_blocking_requests())
        # Every request is answered within the default wall limit (10 s), never after the guest's 600 s.
        assert time.monotonic() - started < 15, answers
        for status, body in answers:
            assert status == 200 or (status == 500 and body["reason"] == "timeout"), (status, body)
        status, body = _post(f"{base}/v1/functions/echo:invoke", {"still": "serving"}, 10)
        assert (status, body) == (200, {"still": "serving"})
        assert _ready(base) == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0  # bounded: the drain had nothing left to wait for
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert "draining" in output


async def test_a_model_that_cannot_load_does_not_hold_the_agent_unready(backend: SharedBackend) -> None:
    agent = make_agent(backend)
    try:
        assert await agent.ensure_loaded(tars_model("echo", "builtin://echo"))
        assert not await agent.ensure_loaded(tars_model("broken", "builtin://no-such-guest"))
        assert agent.repository.find("broken") is None
        assert agent.ready(), "every wanted model was tried; the failure stays with its own model"
        assert "no-such-guest" in agent.repository.failed[ModelKey("default", "broken")]
        await agent.ensure_unloaded(ModelKey("default", "broken"))
        assert not agent.repository.failed
    finally:
        agent.close()
