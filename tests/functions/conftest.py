"""Fixtures for users' own functions: the Rust components built from source, user Python functions,
and real agents (real Wasmtime sandboxes) whose catalogs read ConfigMaps from a dict.

The Rust components are built once per session by guests/examples/build.sh (cargo, wasm32-wasip2);
cargo's target directory lives in ~/.cache/tars, so later sessions rebuild nothing.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tars_agent import functions
from tars_agent.agent import Agent, AgentConfig
from tars_agent.capabilities import default_registry
from tars_agent.catalog import Catalog
from tars_agent.sandbox.base import SandboxBackend
from tars_api import TarsModel
from tars_api.tarsnode import SandboxLimits
from tarsctl import localcluster
from tarsctl.fleet import stop_process
from tests.agent.conftest import DEFAULT_PATH, SharedBackend, backend_on_path
from tests.fixtures import ControlPlane, eventually

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "guests" / "examples" / "build.sh"
EXAMPLE_CRATE = REPO / "guests" / "examples" / "rust"
HOSTILE_CRATE = Path(__file__).resolve().parent / "hostile_rust"

# A user's Python function: top-level state (pre-initialised at build time) and a host capability.
USER_PYTHON = """\
GREETINGS = {"en": "hello", "fr": "bonjour", "de": "hallo"}


def handle(input):
    text = input["text"]
    now = call_tool("clock.now")
    return {
        "greeting": GREETINGS.get(input.get("lang", "en"), "hello"),
        "upper": text.upper(),
        "length": len(text),
        "clock_seen": "unix" in now,
    }
"""

# A hostile user's Python function: every op tries one way out of, or around, the sandbox.
HOSTILE_PYTHON = """\
import socket

remembered = None


def handle(input):
    global remembered
    op = input["op"]
    if op == "read_file":
        with open(input.get("path", "/etc/passwd")) as f:
            return {"read": f.read()}
    if op == "socket":
        host, port = input["address"].rsplit(":", 1)
        conn = socket.create_connection((host, int(port)), timeout=2)
        conn.sendall(b"stolen")
        return {"connected": True}
    if op == "memory_bomb":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if op == "spin":
        n = 0
        while True:
            n += 1
    if op == "flood":
        return "x" * input.get("bytes", 1 << 24)
    if op == "capability":
        return call_tool(input.get("name", "knowledge.query"), question="other tenants' data")
    if op == "remember":
        remembered = input["secret"]
        return {"remembered": True}
    if op == "recall":
        return {"remembered": remembered}
    raise ValueError(f"unknown op {op}")
"""

BROKEN_PYTHON = """\
def handle(input):
    return {"ok": True


x = 1
"""

NODE_LIMITS = SandboxLimits.model_validate(
    {"memoryMiB": 128, "cpuTimeMs": 1500, "wallTimeoutMs": 4000, "outputBytes": 65536}
)


def build_components(out: Path) -> dict[str, Path]:
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), str(out), str(EXAMPLE_CRATE), str(HOSTILE_CRATE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    assert result.returncode == 0, f"building the Rust components failed:\n{result.stderr[-4000:]}"
    return {"textstats": out / "tars-example-textstats.wasm", "hostile": out / "tars-test-hostile-fn.wasm"}


@pytest.fixture(scope="session")
def components(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_components(tmp_path_factory.mktemp("components"))


@pytest.fixture(scope="session")
def backend() -> SandboxBackend:
    """One backend for the session (each component compiles once), on the agent's default path."""
    return backend_on_path(DEFAULT_PATH)


def function_model(name: str, namespace: str = "tenant-a", **spec: Any) -> TarsModel:
    body = {"nodeRef": {"name": "test"}, "kind": "function", **spec}
    return TarsModel.model_validate({"metadata": {"name": name, "namespace": namespace}, "spec": body})


class ConfigMaps(dict[tuple[str, str], dict[str, Any]]):
    """ConfigMaps by (namespace, name), served to the agent's configmap:// reader."""

    def read(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.get((namespace, name))


def make_agent(backend: SandboxBackend, configmaps: ConfigMaps, **config: Any) -> Agent:
    catalog = Catalog()
    functions.install(catalog, configmaps.read)
    # The tests' function files and components live under pytest's temporary directories.
    roots = (Path(tempfile.gettempdir()),)
    settings = {
        "workers": 4,
        "max_queue": 16,
        "warm_pool_size": 1,
        "node_limits": NODE_LIMITS,
        "model_roots": roots,
        **config,
    }
    return Agent(AgentConfig(**settings), backend, "wasmtime requested by the tests", default_registry(), catalog)


@pytest.fixture
def configmaps() -> ConfigMaps:
    return ConfigMaps()


@pytest.fixture
async def agent(backend: SharedBackend, configmaps: ConfigMaps) -> AsyncIterator[Agent]:
    instance = make_agent(backend, configmaps)
    yield instance
    instance.close()


@contextmanager
def cluster_agent_process(
    control_plane: ControlPlane, namespace: str, node: str, log: Path, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """A real tars-agent process in cluster mode for TarsNode ``tars`` of ``namespace``, standing for the
    agent pod on ``node`` (the environment the pod gets); yields its URL once it is live."""
    port = localcluster.free_port()
    environment = {
        **control_plane.env,
        "NODE_NAME": node,
        "POD_IP": "127.0.0.1",
        "POD_NAMESPACE": namespace,
        "POD_NAME": f"tars-agent-{node}",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    command = [sys.executable, "-m", "tars_agent.main", "--backend", "wasmtime", "--host", "127.0.0.1"]
    # These tests call functions from the host without a token: open is the explicit choice (the
    # default, namespace, is tested with the access rules).
    command += ["--default-access", "open", "--port", str(port), "--tarsnode", "tars"]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        live = f"{url}/v2/health/live"
        eventually(lambda: urllib.request.urlopen(live, timeout=1).status == 200, timeout=120, what="agent up")
        yield url
    finally:
        stop_process(process)
        print(log.read_text(errors="replace")[-3000:])


@pytest.fixture
def cluster_agent(
    control_plane: ControlPlane, namespace: str, simulated_nodes: tuple[str, ...], tmp_path: Path
) -> Iterator[str]:
    """A real tars-agent process in cluster mode, standing for the agent on the first simulated node."""
    with cluster_agent_process(control_plane, namespace, simulated_nodes[0], tmp_path / "agent.log") as url:
        yield url
