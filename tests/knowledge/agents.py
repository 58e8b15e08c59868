"""Real tars-agent processes serving builtin://knowledge-query against a knowledge store, and the
HTTP calls the tests make to them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tarsctl import localcluster
from tarsctl.fleet import stop_process
from tests.fixtures import eventually

KB_MODEL = {
    "apiVersion": "tars.hyperlight.dev/v1alpha1",
    "kind": "TarsModel",
    "metadata": {"name": "kb"},
    "spec": {
        "nodeRef": {"name": "tars"},
        "kind": "function",
        "source": "builtin://knowledge-query",
        "capabilities": ["knowledge.query", "knowledge.upsert"],
    },
}


def call(url: str, body: dict[str, Any], model: str = "kb") -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) of invoking ``model``; errors are answers too."""
    request = urllib.request.Request(
        f"{url}/v1/functions/{model}:invoke", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read()), dict(reply.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), dict(err.headers)


def answered(url: str, body: dict[str, Any], model: str = "kb", timeout: float = 120) -> dict[str, Any]:
    """The 200 answer of invoking ``model``, asked again after a refusal or a timeout (a loaded 2-core
    CI machine queues or times out a call now and then): tests judge what an agent answers, not how
    fast. Only for idempotent bodies: an upsert repeated writes the same documents again."""

    def ok() -> dict[str, Any]:
        status, answer, _ = call(url, body, model)
        assert status == 200, (status, answer)
        return answer

    return eventually(ok, timeout, f"a 200 answer from {model} at {url}")


def cited(url: str, question: str) -> set[str]:
    return {c["id"] for c in answered(url, {"question": question, "top_k": 10})["citations"]}


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def model_ready(url: str, model: str = "kb") -> bool:
    """The agent holds the model (its documents loaded first): what the agent reports to the operator."""
    try:
        with urllib.request.urlopen(f"{url}/v2/models/{model}/ready", timeout=30) as reply:
            return bool(json.loads(reply.read())["ready"])
    except OSError:
        return False


@dataclass
class AgentProcess:
    """One tars-agent; ``restart`` starts it again with the same port, state and store."""

    args: list[str]
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=localcluster.free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AgentProcess:
        command = [sys.executable, "-m", "tars_agent.main", "--backend", "wasmtime", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--warm-pool", "1", "--workers", "2", *self.args]
        command += ["--grpc-port", "0"]  # REST only: every agent on this host wants the default 8081
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env)
        return self

    def wait_ready(self, timeout: float = 600) -> None:  # a first start may build the guest
        def up() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()[-3000:]
            return ready(self.url)

        eventually(up, timeout, f"agent {self.url} ready")

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=30)
        self.process = None
