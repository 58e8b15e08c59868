"""A real local Kubernetes control plane without Docker: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok, built from Go modules (hack/) and run on loopback.

Simulated nodes are Node objects that kwok keeps Ready (node Lease heartbeats) and whose pods kwok
marks Running; no container actually runs. A node-agent process started by hand (or by the demo and
the tests) stands for the agent of each simulated node.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tars_api.labels import KVM_LABEL, PREFIX
from tarsctl import pki

K8S_VERSION = "v1.37.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SIMULATED_LABEL = PREFIX + "simulated"  # Node objects without a kubelet (kwok)
SERVICE_CIDR = "10.96.0.0/16"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "etcd",
    "helm",
    "kwok",
    "kwok-stages.yaml",
)


class ClusterError(RuntimeError):
    """The local control plane could not be built, started or reached."""


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tars"


def bin_dir() -> Path:
    return Path(os.environ.get("TARS_BIN_DIR", cache_root() / "bin" / K8S_VERSION))


def state_dir() -> Path:
    return Path(os.environ.get("TARS_CLUSTER_DIR", cache_root() / "cluster"))


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if not (bin_dir() / name).is_file()]


def build_binaries(log: Callable[[str], None] = print) -> None:
    """Runs hack/build-control-plane.sh, which skips what is already in the cache."""
    script = REPO_ROOT / "hack" / "build-control-plane.sh"
    if not script.exists():
        raise ClusterError(f"{script} not found: build the control plane from a checkout of the repository")
    process = subprocess.Popen(
        ["bash", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TARS_BIN_DIR": str(bin_dir())},
    )
    assert process.stdout is not None
    for line in process.stdout:
        log(line.rstrip())
    if process.wait() != 0:
        raise ClusterError(f"building the control plane failed; see {bin_dir() / 'build.log'}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def stable_port() -> int:
    """A free port below the kernel's ephemeral range, for a component that restarts on the same port.

    While such a component is down, its clients keep connecting to its port; a port in the ephemeral
    range can then be taken as the source port of one of those attempts (a TCP self-connect) and the
    restart fails with "address already in use"."""
    low = max(_ephemeral_low(), 11000)
    for _ in range(200):
        port = random.randint(10000, low - 1)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if not _answers(port):
            return port
    return free_port()


def _answers(port: int) -> bool:
    """True if something accepts connections on the port although it could be bound: a proxy or
    port forwarder of the sandbox around us, which would swallow a component's clients."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def host_ip() -> str:
    """This machine's primary IPv4 address. Agents standing for simulated nodes advertise it: an
    EndpointSlice may not list a loopback address. Connecting a UDP socket sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
            address: str = sock.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        raise ClusterError("no non-loopback IPv4 address on this machine; agents could not be listed in EndpointSlices")
    return address


@dataclass
class ClusterState:
    """What `up` started, persisted so `status` and `down` work from another process."""

    directory: str
    apiserver_port: int
    etcd_port: int
    pids: dict[str, int] = field(default_factory=dict)
    # Kept, like the other ports, so a restarted etcd finds its member where its data says it is.
    etcd_peer_port: int = field(default_factory=stable_port)

    @property
    def path(self) -> Path:
        return Path(self.directory)

    @property
    def kubeconfig(self) -> Path:
        return self.path / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def save(self) -> None:
        (self.path / "state.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> ClusterState | None:
        try:
            return cls(**json.loads((directory / "state.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None


def _kubeconfig(server: str, ca_pem: bytes, user: str, pair: pki.KeyPair) -> dict:
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tars-local", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(pair.cert_pem), "client-key-data": b64(pair.key_pem)},
            }
        ],
        "contexts": [{"name": "tars-local", "context": {"cluster": "tars-local", "user": user}}],
        "current-context": "tars-local",
    }


def write_pki(directory: Path, server: str) -> None:
    """CA, apiserver serving cert, one client kubeconfig per component and the SA signing key."""
    pki_dir = directory / "pki"
    pki_dir.mkdir(parents=True, exist_ok=True)
    ca, ca_key = pki.make_ca()
    pki.write(ca, pki_dir, "ca")
    serving = pki.issue(
        ca,
        ca_key,
        "kube-apiserver",
        server_names=[
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        server_ips=["127.0.0.1", "10.96.0.1"],
    )
    pki.write(serving, pki_dir, "apiserver")
    # How the API server proves itself to kubelets (kubectl logs/exec on a real node).
    kubelet_client = pki.issue(ca, ca_key, "kube-apiserver-kubelet-client", organization="system:masters")
    pki.write(kubelet_client, pki_dir, "kubelet-client")
    sa_private, sa_public = pki.service_account_key()
    (pki_dir / "sa.key").write_bytes(sa_private)
    (pki_dir / "sa.pub").write_bytes(sa_public)
    users = {
        "kubeconfig": ("tars-admin", "system:masters"),
        "controller-manager.kubeconfig": ("system:kube-controller-manager", None),
        "scheduler.kubeconfig": ("system:kube-scheduler", None),
    }
    for filename, (user, group) in users.items():
        pair = pki.issue(ca, ca_key, user, organization=group)
        config = _kubeconfig(server, ca.cert_pem, user, pair)
        (directory / filename).write_text(yaml.safe_dump(config))
        (directory / filename).chmod(0o600)


def _commands(state: ClusterState) -> dict[str, list[str]]:
    d, b = state.path, bin_dir()
    p = d / "pki"
    etcd_peer = state.etcd_peer_port
    auth_flags = lambda kubeconfig: [  # noqa: E731
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={free_port()}",
        "--leader-elect=false",
    ]
    return {
        "etcd": [
            str(b / "etcd"),
            "--name=tars-local",
            f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{state.etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{state.etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=tars-local=http://127.0.0.1:{etcd_peer}",
            # A throwaway test store: durability across power loss is not worth the fsync latency.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            str(b / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{state.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={state.apiserver_port}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            f"--kubelet-client-certificate={p / 'kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",  # node names do not resolve here
            # A loopback address cannot be published in the kubernetes Service's endpoints.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ],
        "kube-controller-manager": [
            str(b / "kube-controller-manager"),
            *auth_flags(d / "controller-manager.kubeconfig"),
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'ca.crt'}",
            f"--cluster-signing-cert-file={p / 'ca.crt'}",
            f"--cluster-signing-key-file={p / 'ca.key'}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
        ],
        "kube-scheduler": [str(b / "kube-scheduler"), *auth_flags(d / "scheduler.kubeconfig")],
        "kwok": [
            str(b / "kwok"),
            f"--kubeconfig={d / 'kubeconfig'}",
            f"--config={b / 'kwok-stages.yaml'}",
            "--manage-all-nodes=false",
            "--node-lease-duration-seconds=40",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            "--cidr=10.244.0.0/16",
            "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{free_port()}",
        ],
    }


def _ssl_context(state: ClusterState) -> ssl.SSLContext:
    config = yaml.safe_load(state.kubeconfig.read_text())
    ctx = ssl.create_default_context(
        cadata=base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
    )
    user = config["users"][0]["user"]
    certs = state.path / "pki" / "admin-client.pem"
    if not certs.exists():
        certs.write_bytes(base64.b64decode(user["client-certificate-data"]) + base64.b64decode(user["client-key-data"]))
        certs.chmod(0o600)
    ctx.load_cert_chain(certs)
    return ctx


def api_ready(state: ClusterState, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{state.server}/readyz", context=_ssl_context(state), timeout=timeout) as r:
            return bool(r.status == 200)
    except (OSError, ssl.SSLError):
        return False


def etcd_healthy(state: ClusterState, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{state.etcd_port}/health", timeout=timeout) as r:
            return bool(json.loads(r.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def _alive(pid: int, binary: str) -> bool:
    """True only if pid is running the binary we started, so `down` never signals a stranger."""
    own = next((child for child in _children.values() if child.pid == pid), None)
    if own is not None:
        # A child of this process: its exit status is the truth (a reading of /proc/PID/cmdline once
        # called a live etcd gone, and the retry then started a second etcd on the same data).
        return own.poll() is None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return cmdline == binary


def running() -> ClusterState | None:
    """The control plane started earlier by `up`, if it still answers."""
    state = ClusterState.load(state_dir())
    if state is None:
        return None
    every_component_alive = all(_alive(state.pids.get(name, -1), str(bin_dir() / name)) for name in COMPONENTS)
    return state if every_component_alive and api_ready(state) else None


def _start(name: str, command: list[str], state: ClusterState) -> None:
    log = open(state.path / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    state.pids[name] = process.pid
    _children[name] = process
    state.save()


# Processes started by this process, so a failed start can report how a child ended.
_children: dict[str, subprocess.Popen[bytes]] = {}


def _exit_status(name: str) -> str:
    process = _children.get(name)
    code = process.poll() if process is not None else None
    if code is None:
        return "exited"
    return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"


def _log_tail(state: ClusterState, name: str) -> str:
    try:
        return (state.path / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
    except OSError:
        return "(no log)"


def _wait(check: Callable[[], bool], what: str, state: ClusterState, timeout: float, log_of: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for name, pid in state.pids.items():
            if not _alive(pid, str(bin_dir() / name)):
                raise ClusterError(
                    f"{name} {_exit_status(name)} while waiting for {what}; its log ends:\n{_log_tail(state, name)}"
                )
        time.sleep(0.2)
    tail = f"; the {log_of} log ends:\n{_log_tail(state, log_of)}" if log_of else ""
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}; logs in {state.path / 'logs'}{tail}")


def load_api_client(state: ClusterState) -> Any:
    """A kubernetes-client ApiClient for the local control plane."""
    from kubernetes import config

    return config.new_client_from_config(str(state.kubeconfig))


def kubectl(
    state: ClusterState, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(bin_dir() / "kubectl"), f"--kubeconfig={state.kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def up(log: Callable[[str], None] = print) -> ClusterState:
    """Starts the control plane, or returns the one already running. If one was started before and
    some of its components have died since, those are started again on the same ports, with the same
    CA and the same etcd data: a kubeconfig handed out earlier keeps working and no object is lost.
    Only `down` removes the state."""
    existing = running()
    if existing:
        log(f"reusing the control plane at {existing.server}")
        return existing
    if missing_binaries():
        log(f"building missing binaries: {', '.join(missing_binaries())}")
        build_binaries(log)
    previous = ClusterState.load(state_dir())
    if previous is not None and _restartable(previous):
        return _restart(previous, log)
    return _fresh(log)


def _restartable(state: ClusterState) -> bool:
    return (state.path / "pki" / "ca.crt").is_file() and state.kubeconfig.is_file()


def _component_alive(state: ClusterState, name: str) -> bool:
    return _alive(state.pids.get(name, -1), str(bin_dir() / name))


def _restart(state: ClusterState, log: Callable[[str], None]) -> ClusterState:
    dead = [name for name in COMPONENTS if not _component_alive(state, name)]
    log(f"restarting {', '.join(dead) or 'nothing (waiting for the API)'}; keeping the state in {state.path}")
    state.pids = {name: pid for name, pid in state.pids.items() if name not in dead}
    try:
        _start_components(state, log)
    except ClusterError as error:
        raise ClusterError(
            f"{error}\nthe control plane's state is kept in {state.path}; `tarsctl cluster down` removes it"
        ) from error
    return state


def _fresh(log: Callable[[str], None]) -> ClusterState:
    for attempt in (1, 2):
        down(quiet=True)
        directory = state_dir()
        (directory / "logs").mkdir(parents=True, exist_ok=True)
        # The second attempt takes ports the kernel picks, in case the low range misbehaves here.
        pick = stable_port if attempt == 1 else free_port
        state = ClusterState(str(directory), apiserver_port=pick(), etcd_port=pick(), etcd_peer_port=pick())
        write_pki(directory, state.server)
        try:
            _start_components(state, log)
            return state
        except ClusterError as error:
            # A half-started control plane is worse than none: stop what did start. Ports are picked
            # free but can be taken before a component binds them, so one fresh attempt is worth it.
            down(quiet=True)
            if attempt == 2:
                raise
            log(f"starting the control plane failed ({error}); trying once more with fresh ports")
        except BaseException:
            down(quiet=True)
            raise
    raise AssertionError("unreachable")


def _start_components(state: ClusterState, log: Callable[[str], None]) -> None:
    """Starts every component that is not running (all of them, on a fresh state)."""
    commands = _commands(state)
    started = time.monotonic()
    if not _component_alive(state, "etcd"):
        _start("etcd", commands["etcd"], state)
    # Waiting for etcd first names the component at fault: kube-apiserver gives up on an etcd that
    # does not answer within 20 s and its log then says only that.
    _wait(lambda: etcd_healthy(state), "etcd /health", state, timeout=60, log_of="etcd")
    if not _component_alive(state, "kube-apiserver"):
        _start("kube-apiserver", commands["kube-apiserver"], state)
    _wait(lambda: api_ready(state), "kube-apiserver /readyz", state, timeout=90, log_of="kube-apiserver")
    log(f"kube-apiserver ready at {state.server} after {time.monotonic() - started:.1f}s")
    for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
        if not _component_alive(state, name):
            _start(name, commands[name], state)
    _wait(lambda: _default_service_account_exists(state), "the controller-manager", state, timeout=60)
    log(f"control plane up in {time.monotonic() - started:.1f}s; KUBECONFIG={state.kubeconfig}")


def _default_service_account_exists(state: ClusterState) -> bool:
    return kubectl(state, "get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0


def down(quiet: bool = False, log: Callable[[str], None] = print) -> list[str]:
    """Stops exactly the processes `up` started and removes the state directory (real nodes that
    joined are stopped first by :func:`tarsctl.cluster.down`, which builds on this)."""
    directory = state_dir()
    state = ClusterState.load(directory)
    stopped = []
    if state:
        for name in reversed(COMPONENTS):
            pid = state.pids.get(name)
            if pid and _alive(pid, str(bin_dir() / name)):
                os.kill(pid, signal.SIGTERM)
                stopped.append((name, pid))
        deadline = time.monotonic() + 15
        for name, pid in stopped:
            while _alive(pid, str(bin_dir() / name)) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid, str(bin_dir() / name)):
                os.kill(pid, signal.SIGKILL)
    _kill_strays(directory)
    if directory.exists() and (directory / "state.json").exists():
        import shutil

        shutil.rmtree(directory)
    names = [name for name, _ in stopped]
    if not quiet:
        log(f"stopped {', '.join(names)}" if names else "no local control plane was running")
    return names


def _kill_strays(directory: Path) -> None:
    """Kills any component still running on this directory's data that the state no longer names (a
    start that failed half-way): a second etcd on the same data waits forever for its lock."""
    marker = f"={directory}/".encode()
    binaries = {str(bin_dir() / name).encode() for name in COMPONENTS}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0] in binaries and any(marker in arg for arg in argv[1:]):
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


def simulated_node(name: str, *, kvm: bool = True, labels: dict[str, str] | None = None) -> dict:
    """A Node object kwok keeps Ready, labelled as the node-agent would label a KVM host."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                SIMULATED_LABEL: "true",
                **({KVM_LABEL: "true"} if kvm else {}),
                **(labels or {}),
            },
        },
        "status": {
            "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110"},
            "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110"},
        },
    }


def add_node(state: ClusterState, name: str, *, kvm: bool = True, labels: dict[str, str] | None = None) -> None:
    kubectl(
        state,
        "apply",
        "--server-side",
        "--field-manager=tarsctl",
        "-f",
        "-",
        input=json.dumps(simulated_node(name, kvm=kvm, labels=labels)),
    )
