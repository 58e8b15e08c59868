"""The ``tars-agent`` command: standalone serving from YAML files, start-up errors, SIGTERM drain."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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


def test_standalone_serves_model_files_and_drains_on_sigterm(tmp_path: Path, guests: dict[str, Path]) -> None:
    model = tmp_path / "echo.yaml"
    model.write_text(MODEL_YAML)
    port = free_port()
    proc = subprocess.Popen(
        agent_command(
            "--standalone",
            "--model",
            str(model),
            "--backend",
            "wasmtime",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--warm-pool",
            "1",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "agent did not become ready"
            time.sleep(0.2)
        request = urllib.request.Request(
            f"{base}/v1/functions/echo:invoke",
            data=json.dumps({"call": "clock.now"}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert "unix" in json.loads(resp.read())["result"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert "draining" in output


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
