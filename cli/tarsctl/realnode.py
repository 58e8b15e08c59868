"""A real node beside the simulated ones: containerd (with runc and CNI bridge networking) and a
kubelet built from the control plane's own Kubernetes release, run as processes on this machine.

Pods on it are real containers. They reach the API server the way in-cluster clients expect, at
the `kubernetes` Service (10.96.0.1:443, which the serving certificate names): that address is put
on the loopback interface and a relay forwards it to the loopback-only API server. Pods reach it
through the bridge, which is their default gateway. There is no kube-proxy, so other ClusterIPs do
not answer from pods; TARS's own traffic goes to pod IPs (EndpointSlices), which the bridge routes.

One real node per machine: two kubelets would fight over the host's cgroups and port 10250.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization

from tarsctl import localcluster, oci, pki

POD_SUBNET = "10.88.0.0/24"
BRIDGE = "tars0"
API_SERVICE_IP = "10.96.0.1"  # first address of localcluster.SERVICE_CIDR: the `kubernetes` Service
PAUSE_IMAGE = "tars.local/pause:1"
RUNC = "/usr/sbin/runc"
SOCAT = "/usr/bin/socat"
NODE_BINARIES = (
    "kubelet",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "cni/bridge",
    "cni/host-local",
    "cni/loopback",
)
# The kubelet (cgroupfs driver) puts every pod under this cgroup in each v1 hierarchy.
KUBEPODS = "kubepods"


def images_dir() -> Path:
    """Where `make images` writes OCI archives; each one there is imported into the node."""
    return Path(os.environ.get("TARS_IMAGES_DIR", localcluster.cache_root() / "images"))


@dataclass(frozen=True)
class NodePaths:
    root: Path

    @classmethod
    def of(cls, state: localcluster.ClusterState, name: str) -> NodePaths:
        return cls(state.path / "nodes" / name)

    @property
    def socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def pids(self) -> Path:
        return self.root / "pids.json"

    def log(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"


# --- configuration: pure functions --------------------------------------------------------------


def containerd_config(paths: NodePaths, cni_bin: Path) -> str:
    root = paths.root / "containerd"
    return f"""version = 4
root = "{root / "root"}"
state = "{root / "state"}"

[plugins."io.containerd.server.v1.grpc"]
  address = "{paths.socket}"

[plugins."io.containerd.server.v1.ttrpc"]
  address = "{paths.socket}.ttrpc"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  # Keeps pods' network namespaces under our own directory, so `down` finds every one of them.
  netns_mounts_under_state_dir = true
  # Root here lacks CAP_SYS_RESOURCE, so no process may lower its OOM score below containerd's own
  # (the sandbox asks for -998; runc then fails with "can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{paths.root / "cni" / "net.d"}"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      BinaryName = "{RUNC}"
      SystemdCgroup = false
"""


def cni_config(paths: NodePaths) -> dict:
    # No ipMasq and no portmap: both need iptables, and pods only talk to this machine and each other.
    return {
        "cniVersion": "1.0.0",
        "name": "tars",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(paths.root / "cni" / "ipam"),
                },
            },
            {"type": "loopback"},
        ],
    }


def kubelet_config(paths: NodePaths) -> dict:
    pki_dir = paths.root / "pki"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # These machines have cgroup v1 only, which the kubelet refuses unless told otherwise.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "podLogsDir": str(paths.root / "pod-logs"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(paths.root.parents[1] / "pki" / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki_dir / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki_dir / "kubelet.key"),
        "readOnlyPort": 0,
        "failSwapOn": False,
        "podCIDR": POD_SUBNET,
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        # Nothing can be pulled here: the imported images must never be garbage-collected, and a
        # busy shared disk must not evict the pods.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "serializeImagePulls": False,
        "maxPods": 30,
    }


def kubelet_command(paths: NodePaths, name: str, node_ip: str, kvm: bool, labels: dict[str, str]) -> list[str]:
    node_labels = {localcluster.KVM_LABEL: "true"} if kvm else {}
    node_labels.update(labels)
    return [
        str(localcluster.bin_dir() / "kubelet"),
        f"--config={paths.root / 'kubelet.yaml'}",
        f"--kubeconfig={paths.root / 'kubelet.kubeconfig'}",
        f"--root-dir={paths.root / 'kubelet'}",
        f"--hostname-override={name}",
        f"--node-ip={node_ip}",
        *([f"--node-labels={','.join(f'{k}={v}' for k, v in sorted(node_labels.items()))}"] if node_labels else []),
        "--v=1",
    ]


# --- processes ------------------------------------------------------------------------------------


def missing() -> list[str]:
    """What a real node needs that is not here yet, each with how to get it."""
    gone = [f"{b} (make control-plane)" for b in NODE_BINARIES if not (localcluster.bin_dir() / b).is_file()]
    gone += [f"{tool} (apt-get install {Path(tool).name})" for tool in (RUNC, SOCAT) if not Path(tool).is_file()]
    return gone


def _load_pids(paths: NodePaths) -> dict[str, int]:
    try:
        pids: dict[str, int] = json.loads(paths.pids.read_text())
        return pids
    except (OSError, ValueError):
        return {}


def _start(paths: NodePaths, component: str, command: list[str], env: dict[str, str] | None = None) -> int:
    paths.log(component).parent.mkdir(parents=True, exist_ok=True)
    log = open(paths.log(component), "ab")  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    pids = _load_pids(paths)
    pids[component] = process.pid
    paths.pids.write_text(json.dumps(pids))
    return process.pid


def _wait(check: Callable[[], bool], what: str, paths: NodePaths, component: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pid = _load_pids(paths).get(component, -1)
    while time.monotonic() < deadline:
        if check():
            return
        if not Path(f"/proc/{pid}").exists():
            tail = paths.log(component).read_text(errors="replace")[-3000:]
            raise localcluster.ClusterError(f"{component} exited while waiting for {what}; its log ends:\n{tail}")
        time.sleep(0.3)
    raise localcluster.ClusterError(f"timed out after {timeout:.0f}s waiting for {what}; see {paths.log(component)}")


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def ctr(paths: NodePaths, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(str(localcluster.bin_dir() / "ctr"), f"--address={paths.socket}", "--namespace=k8s.io", *args)


def pause_archive() -> Path:
    """The sandbox image, built from hack/pause/pause.c (a static binary) on first use."""
    source = localcluster.REPO_ROOT / "hack" / "pause" / "pause.c"
    archive = images_dir() / "node" / "tars-pause.oci.tar"
    if archive.exists() and archive.stat().st_mtime >= source.stat().st_mtime:
        return archive
    binary = archive.with_suffix(".bin")
    binary.parent.mkdir(parents=True, exist_ok=True)
    result = _run("gcc", "-static", "-Os", "-s", "-o", str(binary), str(source))
    if result.returncode != 0:
        raise localcluster.ClusterError(f"building the pause binary failed:\n{result.stderr}")
    files = {"pause": oci.File(binary.read_bytes(), 0o755)}
    return oci.write_image_archive(archive, PAUSE_IMAGE, files, ["/pause"])


def image_archives() -> list[Path]:
    return [pause_archive(), *sorted(images_dir().glob("*.oci.tar"))]


def import_images(paths: NodePaths, archives: list[Path], log: Callable[[str], None]) -> None:
    for archive in archives:
        started = time.monotonic()
        result = ctr(paths, "images", "import", "--snapshotter=overlayfs", str(archive))
        if result.returncode != 0:
            raise localcluster.ClusterError(f"importing {archive} failed: {result.stderr.strip()}")
        log(f"imported {archive.name} in {time.monotonic() - started:.1f}s")


def _write_pki(state: localcluster.ClusterState, paths: NodePaths, name: str, node_ip: str) -> None:
    cluster_pki = state.path / "pki"
    ca = pki.KeyPair((cluster_pki / "ca.crt").read_bytes(), (cluster_pki / "ca.key").read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    pki_dir = paths.root / "pki"
    pki_dir.mkdir(parents=True, exist_ok=True)
    client = pki.issue(ca, ca_key, f"system:node:{name}", organization="system:nodes")  # type: ignore[arg-type]
    serving = pki.issue(ca, ca_key, name, server_names=[name], server_ips=[node_ip, "127.0.0.1"])  # type: ignore[arg-type]
    pki.write(serving, pki_dir, "kubelet")
    config = localcluster._kubeconfig(state.server, ca.cert_pem, f"system:node:{name}", client)
    (paths.root / "kubelet.kubeconfig").write_text(yaml.safe_dump(config))
    (paths.root / "kubelet.kubeconfig").chmod(0o600)


def _api_relay_command(state: localcluster.ClusterState) -> list[str]:
    return [SOCAT, f"TCP-LISTEN:443,bind={API_SERVICE_IP},fork,reuseaddr", f"TCP:127.0.0.1:{state.apiserver_port}"]


def _address_on_loopback(address: str) -> bool:
    return f" {address}/" in _run("ip", "-4", "addr", "show", "dev", "lo").stdout


def node_ready(state: localcluster.ClusterState, name: str) -> bool:
    result = localcluster.kubectl(state, "get", "node", name, "-o", "json", check=False)
    if result.returncode != 0:
        return False
    conditions = json.loads(result.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def add(
    state: localcluster.ClusterState,
    name: str,
    *,
    kvm: bool = False,
    labels: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> NodePaths:
    """Starts containerd and a kubelet registering Node `name`, with the images imported."""
    if missing():
        localcluster.build_binaries(log)
    if gone := missing():
        raise localcluster.ClusterError(f"a real node needs: {', '.join(gone)}")
    nodes_dir = state.path / "nodes"
    if nodes_dir.exists() and any(running(NodePaths(d)) for d in nodes_dir.iterdir()):
        raise localcluster.ClusterError("a real node already runs here (one per machine: see tarsctl/realnode.py)")
    if (Path("/sys/fs/cgroup/memory") / KUBEPODS).exists():
        raise localcluster.ClusterError(
            f"/sys/fs/cgroup/memory/{KUBEPODS} exists: another kubelet runs (or ran) on this machine"
        )
    paths = NodePaths.of(state, name)
    started = time.monotonic()
    node_ip = localcluster.host_ip()
    for sub in ("cni/net.d", "cni/ipam", "containerd", "kubelet", "pod-logs", "logs"):
        (paths.root / sub).mkdir(parents=True, exist_ok=True)
    _write_pki(state, paths, name, node_ip)
    (paths.root / "containerd.toml").write_text(containerd_config(paths, localcluster.bin_dir() / "cni"))
    (paths.root / "cni" / "net.d" / "10-tars.conflist").write_text(json.dumps(cni_config(paths), indent=2))
    (paths.root / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config(paths)))

    path_env = {"PATH": f"{localcluster.bin_dir()}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    containerd = [str(localcluster.bin_dir() / "containerd"), f"--config={paths.root / 'containerd.toml'}"]
    _start(paths, "containerd", containerd, path_env)
    _wait(lambda: ctr(paths, "version").returncode == 0, "containerd", paths, "containerd", timeout=60)
    import_images(paths, image_archives(), log)

    if not _address_on_loopback(API_SERVICE_IP):
        _run("ip", "addr", "add", f"{API_SERVICE_IP}/32", "dev", "lo")
    _start(paths, "api-relay", _api_relay_command(state))

    _start(paths, "kubelet", kubelet_command(paths, name, node_ip, kvm, labels or {}), path_env)
    _wait(lambda: node_ready(state, name), f"node/{name} Ready", paths, "kubelet", timeout=180)
    log(f"node/{name} is Ready (real: containerd + kubelet) after {time.monotonic() - started:.1f}s")
    return paths


def running(paths: NodePaths) -> bool:
    pid = _load_pids(paths).get("kubelet", -1)
    return localcluster._alive(pid, str(localcluster.bin_dir() / "kubelet"))


# --- teardown -------------------------------------------------------------------------------------


def _kill(pid: int, binary: str, timeout: float = 10) -> None:
    if not localcluster._alive(pid, binary):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while localcluster._alive(pid, binary) and time.monotonic() < deadline:
        time.sleep(0.1)
    if localcluster._alive(pid, binary):
        os.kill(pid, signal.SIGKILL)


def _pod_processes() -> set[int]:
    """Every process in the kubelet's pod cgroups (containers and their sandboxes)."""
    pids: set[int] = set()
    top = Path("/sys/fs/cgroup/pids", KUBEPODS)
    for procs in top.rglob("cgroup.procs") if top.exists() else []:
        pids.update(int(p) for p in procs.read_text().split())
    return pids


def _shims(paths: NodePaths) -> set[int]:
    shim = str(localcluster.bin_dir() / "containerd-shim-runc-v2")
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].decode(errors="replace") == shim and str(paths.socket).encode() in b" ".join(argv):
            found.add(int(proc.name))
    return found


def _mounts_under(directory: Path) -> list[str]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(directory) or point.startswith(f"{directory}/"):
            mounts.append(point)
    return mounts


def _remove_cgroups() -> None:
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / KUBEPODS
        if not top.is_dir():
            continue
        # Deepest first: a cgroup directory can only be removed once its children are gone.
        for directory in sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
            directory.rmdir()
        top.rmdir()


def stop(paths: NodePaths, log: Callable[[str], None] = print) -> None:
    """Stops the kubelet, every pod, containerd and the relay, and removes what they left in the host:
    mounts, network namespaces (and with them the pods' veths), the bridge, the cgroups."""
    pids = _load_pids(paths)
    b = localcluster.bin_dir()
    _kill(pids.get("kubelet", -1), str(b / "kubelet"))
    for pid in _pod_processes() | _shims(paths):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _kill(pids.get("containerd", -1), str(b / "containerd"))
    _kill(pids.get("api-relay", -1), SOCAT)
    deadline = time.monotonic() + 10
    while _pod_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    for point in sorted(_mounts_under(paths.root), key=len, reverse=True):
        _run("umount", "-l", point)
    _run("ip", "link", "del", BRIDGE)
    if _address_on_loopback(API_SERVICE_IP):
        _run("ip", "addr", "del", f"{API_SERVICE_IP}/32", "dev", "lo")
    try:
        _remove_cgroups()
    except OSError as error:
        log(f"could not remove the {KUBEPODS} cgroups: {error}")
    shutil.rmtree(paths.root, ignore_errors=True)
    log(f"stopped real node {paths.root.name}")


def stop_all(cluster_dir: Path, log: Callable[[str], None] = print) -> None:
    nodes = cluster_dir / "nodes"
    for directory in sorted(nodes.iterdir()) if nodes.is_dir() else []:
        stop(NodePaths(directory), log)


def pod_log_tail(paths: NodePaths, pod_name_prefix: str, lines: int = 40) -> str:
    """The last lines of a pod's container logs, read from the node's log directory (for reports)."""
    out = []
    for log_file in sorted((paths.root / "pod-logs").glob(f"*_{pod_name_prefix}*/*/*.log")):
        text = log_file.read_text(errors="replace").splitlines()[-lines:]
        # CRI log lines start with a timestamp, the stream and a partial/full tag.
        body = "\n".join(re.sub(r"^\S+ \S+ \S+ ", "", t) for t in text)
        out.append(f"== {log_file.relative_to(paths.root)}\n{body}")
    return "\n".join(out)
