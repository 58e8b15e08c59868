"""A whole TARS system on this machine: the operator, one node-agent process per simulated node,
and the gateway, all against the local control plane (or any cluster in KUBECONFIG).

The demo and the end-to-end tests use it. Agents standing for simulated nodes run in cluster mode,
exactly as in a pod: NODE_NAME, POD_IP (this host's address: EndpointSlices refuse loopback),
POD_NAMESPACE and the agent configuration the operator renders into the TarsNode's ConfigMap.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tars_api.labels import AGENT_CONFIG_KEY
from tarsctl import localcluster


class FleetError(RuntimeError):
    pass


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        stop_process(self.popen, sig, timeout)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def stop_process(popen: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Signals a child (SIGTERM: let it drain) and reaps it, killing it if it outstays ``timeout``."""
    if popen.poll() is None:
        popen.send_signal(sig)
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def wait_http(url: str, process: Process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if not process.alive():
            raise FleetError(f"{process.name} exited:\n{process.log_tail()}")
        time.sleep(0.2)
    raise FleetError(f"{process.name} not healthy at {url} within {timeout}s:\n{process.log_tail()}")


CRDS = Path(__file__).resolve().parents[2] / "crds"
EXAMPLE_TARSNODE = Path(__file__).resolve().parents[2] / "examples" / "tarsnode.yaml"


def until(predicate: Callable[[], Any], timeout: float = 60, poll: float = 0.05) -> float:
    """Monotonic time at which ``predicate`` first held (benchmarks measure with it)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic()
        time.sleep(poll)
    raise TimeoutError(f"condition not reached within {timeout}s")


@dataclass
class Fleet:
    state: localcluster.ClusterState
    namespace: str
    workdir: Path
    processes: dict[str, Process] = field(default_factory=dict)

    @classmethod
    def create(cls, prefix: str, nodes: int, log: Callable[[str], None] = print) -> tuple[Fleet, list[str]]:
        """A fresh namespace on the local control plane (started or reused), with the CRDs and
        ``nodes`` simulated KVM nodes; the caller starts what it needs and calls stop()."""
        state = localcluster.up(log)
        namespace = f"{prefix}-{uuid.uuid4().hex[:6]}"
        localcluster.kubectl(state, "create", "namespace", namespace)
        localcluster.kubectl(state, "apply", "--server-side", "-f", str(CRDS))
        names = [f"{prefix}-{i}" for i in range(nodes)]
        for node in names:
            localcluster.add_node(state, node, kvm=True)
        return cls(state, namespace, Path(tempfile.mkdtemp(prefix=f"tars-{prefix}-"))), names

    def get_json(self, kind: str, name: str) -> dict[str, Any]:
        out = self.kubectl("get", kind, name, "-n", self.namespace, "-o", "json").stdout
        result: dict[str, Any] = json.loads(out)
        return result

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.state.kubeconfig), "PYTHONUNBUFFERED": "1"}

    def _spawn(self, name: str, argv: list[str], port: int, extra_env: dict[str, str] | None = None) -> Process:
        log = self.workdir / f"{name}.log"
        popen = subprocess.Popen(
            argv,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env={**self.env, **(extra_env or {})},
            start_new_session=True,
        )
        process = Process(name, popen, log, port)
        self.processes[name] = process
        return process

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return localcluster.kubectl(self.state, *args, input=input, check=check)

    def start_operator(self, name: str = "operator", priority: int = 100) -> Process:
        self.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "tars"}}),
        )
        metrics, health = localcluster.free_port(), localcluster.free_port()
        process = self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "tars_operator.main",
                f"--priority={priority}",
                f"--metrics-port={metrics}",
                f"--health-port={health}",
            ],
            metrics,
            {"TARS_PEERING_LIFETIME": "10"},
        )
        wait_http(f"http://127.0.0.1:{health}/healthz", process)
        return process

    def agent_config(self, tarsnode: str, timeout: float = 30) -> Path:
        """The agent configuration the operator rendered for this TarsNode (its ConfigMap)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.kubectl(
                "get", "configmap", f"{tarsnode}-agent", "-n", self.namespace, "-o", "json", check=False
            )
            if result.returncode == 0:
                path = self.workdir / f"{tarsnode}-agent.yaml"
                path.write_text(json.loads(result.stdout)["data"][AGENT_CONFIG_KEY])
                return path
            if time.monotonic() > deadline:
                raise FleetError(f"the operator did not create configmap/{tarsnode}-agent: {result.stderr}")
            time.sleep(0.3)

    def start_agent(self, node: str, tarsnode: str = "tars") -> Process:
        return self.start_agents([node], tarsnode)[0]

    def start_agents(self, nodes: list[str] | tuple[str, ...], tarsnode: str = "tars") -> list[Process]:
        """One agent per node, started together (as a DaemonSet's pods would be), then waited for."""
        config = self.agent_config(tarsnode)
        started = []
        for node in nodes:
            port = localcluster.free_port()
            env = {
                "NODE_NAME": node,
                "POD_IP": localcluster.host_ip(),
                "POD_NAMESPACE": self.namespace,
                "POD_NAME": f"{tarsnode}-agent-{node}",
                "TARS_PORT": str(port),
            }
            # Each agent its own gRPC port too: on one host they would otherwise all want 8081.
            grpc = str(localcluster.free_port())
            argv = [sys.executable, "-m", "tars_agent.main", "--config", str(config), "--port", str(port)]
            argv += ["--grpc-port", grpc]
            started.append(self._spawn(f"agent-{node}", argv, port, env))
        for process in started:
            wait_http(f"http://127.0.0.1:{process.port}/v2/health/live", process)
        return started

    def start_gateway(self) -> Process:
        port = localcluster.free_port()
        process = self._spawn(
            "gateway",
            [sys.executable, "-m", "tars_gateway.server", f"--namespace={self.namespace}", f"--port={port}"],
            port,
        )
        wait_http(f"http://127.0.0.1:{port}/v2/health/live", process)
        return process

    def stop(self, delete_namespace: bool = False) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()
        if delete_namespace:
            self.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)


def post(
    url: str, body: dict[str, Any], timeout: float = 30, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    sent = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@dataclass
class SteadyLoad:
    """Bounded traffic in a background thread: one request at a time, statuses counted."""

    url: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> SteadyLoad:
        def run() -> None:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    # Above the gateway's 30 s hold: a request held across a rolling update still counts.
                    status, answer = post(self.url, self.body, timeout=60, headers=self.headers)
                except OSError as exc:
                    status, answer = 0, {"error": repr(exc)}
                if status != 200:
                    self.errors.append(f"{status}: {answer}"[:300])
                self.statuses[status] += 1
                self.latencies.append(time.perf_counter() - started)
                time.sleep(0.02)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=70)
