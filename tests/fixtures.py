"""Session-wide fixtures: the real local control plane (never a mock) and a namespace per test.

The control plane is started once per test session, or reused if `tarsctl cluster up` already
started one; it is stopped at the end only if this session started it. Tests that need it take the
`control_plane` or `namespace` fixture and are marked `cluster`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tarsctl import cluster, localcluster
from tarsctl.fleet import stop_process

REPO = Path(__file__).resolve().parents[1]


T = TypeVar("T")


def eventually(probe: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except Exception as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"{what} not reached within {timeout}s; last: {last!r}")


@dataclass
class ControlPlane:
    state: localcluster.ClusterState
    kubeconfig: Path
    bin_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return localcluster.kubectl(self.state, *args, input=input, check=check)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin_dir / "helm"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=self.env,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr}")
        return result


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"control_plane", "namespace", "kube"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    started_here = localcluster.running() is None
    state = localcluster.up(log=lambda line: print(line))
    plane = ControlPlane(
        state=state,
        kubeconfig=state.kubeconfig,
        bin_dir=localcluster.bin_dir(),
        env={**os.environ, "KUBECONFIG": str(state.kubeconfig)},
    )
    plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
    _wait_for_openapi(plane, ("tarsnode", "tarsmodel"))
    yield plane
    if started_here and not os.environ.get("TARS_KEEP_CLUSTER"):
        cluster.down(quiet=True)


def _wait_for_openapi(plane: ControlPlane, kinds: tuple[str, ...], timeout: float = 60.0) -> None:
    """The API server publishes a new CRD's OpenAPI (what `kubectl explain` reads) a little after
    the CRD is Established; wait for it so tests see the cluster a user would."""
    deadline = time.monotonic() + timeout
    for kind in kinds:
        while plane.kubectl("explain", kind, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"OpenAPI for {kind} not published within {timeout}s")
            time.sleep(0.5)


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


SIMULATED_NODES = ("tars-sim-1", "tars-sim-2", "tars-sim-3")


@pytest.fixture(scope="session")
def simulated_nodes(control_plane: ControlPlane) -> tuple[str, ...]:
    """Three KVM-labelled nodes that kwok keeps Ready, in two zones."""
    for index, name in enumerate(SIMULATED_NODES):
        localcluster.add_node(
            control_plane.state, name, kvm=True, labels={"topology.kubernetes.io/zone": f"zone-{index % 2}"}
        )
    control_plane.kubectl("wait", "--for=condition=Ready", "--timeout=60s", *[f"node/{n}" for n in SIMULATED_NODES])
    return SIMULATED_NODES


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_operator(control_plane: ControlPlane, log: Path, priority: int, lifetime: int = 20) -> OperatorProcess:
    """A real tars-operator process against the local control plane."""
    metrics_port, health_port = localcluster.free_port(), localcluster.free_port()
    env = {**control_plane.env, "TARS_PEERING_LIFETIME": str(lifetime), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tars_operator.main",
            f"--priority={priority}",
            f"--metrics-port={metrics_port}",
            f"--health-port={health_port}",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=1):
                return OperatorProcess(process, log, metrics_port)
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"tars-operator exited: {log.read_text()[-3000:]}") from None
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"tars-operator did not become healthy: {log.read_text()[-3000:]}")


# Per module, not per session: an operator left running would act on every later module's objects
# (e2e starts its own pair and must be the only operators when it restarts everything).
@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "tars"}}),
    )
    running = start_operator(control_plane, tmp_path_factory.mktemp("operator") / "operator.log", priority=100)
    yield running
    stop_process(running.process, timeout=15)
