"""A hung agent (SIGSTOPped: the kernel still accepts its connections, nothing answers) must not hold
requests: each attempt is bounded, retried on another agent, and the hung agent is ejected.
Two real tars-agent processes serve a real guest; the gateway is the real one."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tars_gateway.routes import Endpoint, RouteTable
from tars_gateway.server import ATTEMPTS, EJECTIONS, create_app
from tars_guests.build import build_guest
from tars_guests.testapps import ECHO_APP
from tests.agent.test_main import free_port

MODEL_YAML = """\
apiVersion: tars.hyperlight.dev/v1alpha1
kind: TarsModel
metadata:
  name: echo
spec:
  nodeRef: {name: ignored-in-standalone}
  kind: function
  source: builtin://echo
"""


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None, log.read_text()
        time.sleep(0.3)
    raise AssertionError(f"agent on {port} not ready:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[int, subprocess.Popen[bytes]]]]:
    build_guest(ECHO_APP)  # cached across runs; built once before the agents race for it
    directory = tmp_path_factory.mktemp("agents")
    model = directory / "echo.yaml"
    model.write_text(MODEL_YAML)
    started = []
    try:
        for i in range(2):
            port, log = free_port(), directory / f"agent-{i}.log"
            command = [sys.executable, "-c", "from tars_agent.main import main; main()", "--standalone"]
            command += ["--model", str(model), "--backend", "wasmtime", "--host", "127.0.0.1", "--port", str(port)]
            proc = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
            started.append((port, proc, log))
        for port, proc, log in started:
            _wait_ready(port, proc, log)
        yield [(port, proc) for port, proc, _ in started]
    finally:
        for _, proc, _ in started:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


async def test_a_stopped_agent_is_left_quickly_and_ejected(agents: list[tuple[int, subprocess.Popen[bytes]]]) -> None:
    (hung_port, hung), (good_port, _) = agents
    hung_address = f"127.0.0.1:{hung_port}"
    table = RouteTable()
    table.model_nodes["echo"] = "tars"
    table.set_slice("echo", "s", [(Endpoint(hung_address), True), (Endpoint(f"127.0.0.1:{good_port}"), True)])
    # The hard cap is far away: what must save the request is the liveness probe of a slow attempt.
    settings = argparse.Namespace(
        attempts=3,
        wake_timeout=2.0,
        upstream_timeout=30.0,
        probe_after=0.5,
        probe_timeout=1.0,
        eject_after=2,
        ejection_time=60.0,
    )
    client = TestClient(TestServer(create_app(table, settings)))
    await client.start_server()
    hung_before = ATTEMPTS.labels("echo", "hung")._value.get()
    ejections_before = EJECTIONS.labels(hung_address)._value.get()
    os.kill(hung.pid, signal.SIGSTOP)
    try:
        took = []
        for i in range(8):
            started = time.monotonic()
            response = await client.post("/v1/functions/echo:invoke", json={"i": i})
            took.append(time.monotonic() - started)
            assert response.status == 200, await response.text()
            assert json.dumps({"i": i})[1:-1] in await response.text()
        # Before: a request that met the stopped agent waited for as long as it was stopped.
        assert max(took) < 5, took
        assert ATTEMPTS.labels("echo", "hung")._value.get() - hung_before == 2
        # Two hung attempts eject it; after that no attempt goes to it (else more would count as hung).
        assert EJECTIONS.labels(hung_address)._value.get() - ejections_before == 1
        metrics = await (await client.get("/metrics")).text()
        assert "tars_gateway_ejected_agents 1.0" in metrics
    finally:
        os.kill(hung.pid, signal.SIGCONT)
        await client.close()
