"""The running TARS system the demo measures: cluster access, objects, agents' metrics and memory.

Thin adapters only (kubectl, HTTP, /proc); what is done with the numbers lives in pure modules.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tars_api.labels import NODE_LABEL, TARSNODE_LABEL
from tars_api.lease import ANNOTATION_ADDRESS, ANNOTATION_BACKEND, ANNOTATION_BACKEND_REASON, ANNOTATION_MODELS
from tarsctl import localcluster

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class ExternalCluster(localcluster.ClusterState):
    """A cluster named by KUBECONFIG: same interface as the local control plane's state."""

    kubeconfig_path: str = ""

    @property
    def kubeconfig(self) -> Path:
        return Path(self.kubeconfig_path)


def connect(local: bool, log: Any = print) -> tuple[localcluster.ClusterState, bool]:
    """(cluster, started_here): KUBECONFIG's cluster unless ``local``, else the local control plane
    (reused when one runs; started_here says whether this call started it)."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig and not local:
        return ExternalCluster(
            directory=str(Path(kubeconfig).parent), apiserver_port=0, etcd_port=0, kubeconfig_path=kubeconfig
        ), False
    started_here = localcluster.running() is None
    return localcluster.up(log=log), started_here


def kubectl_json(state: localcluster.ClusterState, *args: str) -> Any:
    return json.loads(localcluster.kubectl(state, "get", *args, "-o", "json").stdout)


def machine_resources() -> dict[str, str]:
    """This machine's CPUs and memory as Node quantities: what an agent running here can use."""
    with open("/proc/meminfo") as meminfo:
        total_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return {"cpu": str(os.cpu_count() or 1), "memory": f"{total_kib}Ki", "pods": "110"}


def set_node_resources(state: localcluster.ClusterState, node: str, resources: dict[str, str]) -> None:
    """A simulated Node's capacity and allocatable (its status), so what reads them reads the truth."""
    patch = {"status": {"capacity": resources, "allocatable": resources}}
    localcluster.kubectl(state, "patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps(patch))


def apply_docs(state: localcluster.ClusterState, namespace: str, docs: list[dict[str, Any]]) -> None:
    localcluster.kubectl(state, "apply", "-n", namespace, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            found: dict[str, Any] = cond
            return found
    return None


def is_ready(obj: dict[str, Any]) -> bool:
    cond = condition(obj, "Ready")
    generation = (obj.get("metadata") or {}).get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    return cond is not None and cond.get("status") == "True" and observed == generation


@dataclass(frozen=True)
class AgentInfo:
    node: str
    address: str  # host:port of the data plane
    backend: str
    backend_reason: str
    models: dict[str, Any]


def agents(state: localcluster.ClusterState, namespace: str, tarsnode: str) -> list[AgentInfo]:
    """The agents of a TarsNode, from their Leases (what the operator itself reads)."""
    leases = kubectl_json(state, "leases", "-n", namespace, "-l", f"{TARSNODE_LABEL}={tarsnode}")
    found = []
    for lease in leases.get("items", []):
        notes = lease["metadata"].get("annotations") or {}
        if ANNOTATION_ADDRESS not in notes:
            continue
        found.append(
            AgentInfo(
                node=lease["metadata"].get("labels", {}).get(NODE_LABEL, ""),
                address=notes[ANNOTATION_ADDRESS],
                backend=notes.get(ANNOTATION_BACKEND, ""),
                backend_reason=notes.get(ANNOTATION_BACKEND_REASON, ""),
                models=json.loads(notes.get(ANNOTATION_MODELS) or "{}"),
            )
        )
    return sorted(found, key=lambda a: a.node)


def parse_metrics(text: str) -> Samples:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def scrape(address: str, timeout: float = 5.0) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
        return parse_metrics(response.read().decode())


def metric_sum(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and wanted <= set(lbls))


def rss_mib(pid: int) -> float:
    """Resident set size of a process (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def post_json(url: str, body: Any = None, raw: bytes | None = None, timeout: float = 60) -> tuple[int, Any]:
    """(status, parsed body or text) of one POST; HTTP errors are answers, not exceptions."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload[:500].decode(errors="replace")


def model_url(gateway: str, name: str, route: str) -> str:
    if route == "infer":
        return f"{gateway}/v2/models/{name}/infer"
    return f"{gateway}/v1/functions/{name}:invoke"


def wait_for(probe: Any, timeout: float, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
