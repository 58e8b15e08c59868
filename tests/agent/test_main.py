"""The ``tars-agent`` command: standalone serving from YAML files, start-up errors, SIGTERM drain."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tars_agent.sandbox.probe import probe_kvm

MODEL_YAML = """\
apiVersion: tars.hyperlight.dev/v1alpha1
kind: TarsModel
metadata:
  name: echo
spec:
  nodeRef: {name: ignored-in-standalone}
  kind: function
  source: builtin://echo
  capabilities: [clock.now]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from tars_agent.main import main; main()", *args]


# The compiled sentiment guest as a standalone model file (the processes below serve it).
SENTIMENT_YAML = """
apiVersion: tars.hyperlight.dev/v1alpha1
kind: TarsModel
metadata: {name: sentiment}
spec: {nodeRef: {name: local}, kind: sentiment, source: "builtin://sentiment-vader"}
"""


@dataclass
class AgentProcess:
    proc: subprocess.Popen[str]
    port: int
    output: str = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def standalone_agent(tmp: Path, model_yaml: str, *extra: str, stop_timeout: float = 60) -> Iterator[AgentProcess]:
    """``tars-agent --standalone`` serving one model file, as users start it. Leaving the block sends
    SIGTERM and asserts a clean exit within ``stop_timeout`` (else the process is killed); ``output``
    then holds what it printed."""
    model = tmp / "model.yaml"
    model.write_text(model_yaml)
    port = free_port()
    flags = ["--model", str(model), "--backend", "wasmtime", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        agent_command("--standalone", *flags, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    agent = AgentProcess(proc, port)
    try:
        yield agent
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=stop_timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        agent.output = proc.communicate()[0]
    assert code == 0, agent.output[-2000:]


def test_standalone_serves_model_files_and_drains_on_sigterm(tmp_path: Path, guests: dict[str, Path]) -> None:
    with standalone_agent(tmp_path, MODEL_YAML, "--warm-pool", "1", stop_timeout=30) as agent:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{agent.base}/v2/health/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert agent.proc.poll() is None and time.monotonic() < deadline, "agent did not become ready"
            time.sleep(0.2)
        request = urllib.request.Request(
            f"{agent.base}/v1/functions/echo:invoke",
            data=json.dumps({"call": "clock.now"}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert "unix" in json.loads(resp.read())["result"]
    assert "draining" in agent.output


def test_bad_model_file_names_the_field(tmp_path: Path) -> None:
    model = tmp_path / "bad.yaml"
    model.write_text(MODEL_YAML.replace("kind: function", "kind: telepathy"))
    done = subprocess.run(
        agent_command("--standalone", "--model", str(model)), capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "spec.kind" in done.stderr and "bad.yaml" in done.stderr


def test_forcing_hyperlight_where_it_cannot_run_is_a_start_up_error(tmp_path: Path) -> None:
    if probe_kvm().usable:
        return  # on a machine with hardware KVM the agent would rightly start
    model = tmp_path / "echo.yaml"
    model.write_text(MODEL_YAML)
    done = subprocess.run(
        agent_command("--standalone", "--model", str(model), "--backend", "hyperlight", "--port", str(free_port())),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert done.returncode == 2
    assert "hyperlight backend requested but Hyperlight cannot run here" in done.stderr


def test_cluster_mode_needs_node_name() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NODE_NAME"}
    done = subprocess.run(agent_command(), capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0 and "NODE_NAME" in done.stderr
