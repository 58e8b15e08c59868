"""Install benchmark on the local cluster with a real node: what a user sees after `helm install`.

    python bench/install.py

Starts (or reuses) the local control plane, adds a real node (containerd + kubelet) with the images
`make images` built, then measures:

- `helm install` (operator, gateway) -> a TarsNode's agent pod ready -> the first answered request
  through the gateway pod, for a model applied right after the install;
- the agent pod's RSS (its /metrics process_resident_memory_bytes) idle, and with the five builtin
  models of examples/models.yaml loaded;
- each further model's apply -> Ready time in the pod (placement, load from the image's prebuilt guests,
  the agent's report, the operator's status). `bench/images.py` measures the bare load time in the
  image without the control loop.

Prints a table and one JSON line. Goal: install -> first answer <= 60 s.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from tarsctl import localcluster, realnode
from tarsctl.fleet import post

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "tars-operator"
NODE = "tars-bench-real"
GOAL_FIRST_ANSWER_S = 60.0
SENTIMENT = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["installing is easy"]}]}
console = Console()


def kubectl_json(state: localcluster.ClusterState, *args: str) -> Any:
    return json.loads(localcluster.kubectl(state, "get", *args, "-o", "json").stdout)


def wait(predicate: Any, timeout: float, what: str, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except (OSError, ValueError, KeyError, IndexError, localcluster.ClusterError):
            pass
        time.sleep(poll)
    raise TimeoutError(f"{what} not reached within {timeout:.0f}s")


def ready_pod_ip(state: localcluster.ClusterState, namespace: str, selector: str) -> str | None:
    for pod in kubectl_json(state, "pods", "-n", namespace, "-l", selector)["items"]:
        conditions = pod.get("status", {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return str(pod["status"]["podIP"])
    return None


def rss_mib(agent_ip: str) -> float:
    with urllib.request.urlopen(f"http://{agent_ip}:8080/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(r"^process_resident_memory_bytes ([0-9.e+]+)$", text, re.M)
    if not match:
        raise RuntimeError("the agent's /metrics has no process_resident_memory_bytes")
    return float(match.group(1)) / 2**20


def model_ready(state: localcluster.ClusterState, namespace: str, name: str) -> bool:
    status = kubectl_json(state, "tarsmodel", name, "-n", namespace).get("status", {})
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def apply(state: localcluster.ClusterState, namespace: str, documents: list[dict[str, Any]]) -> None:
    for doc in documents:
        doc.setdefault("metadata", {})["namespace"] = namespace
    localcluster.kubectl(state, "apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(d) for d in documents))


def main() -> None:
    subprocess.run(["make", "-C", str(ROOT), "images"], check=True)
    state = localcluster.up(console.print)
    localcluster.kubectl(state, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    paths = realnode.add(state, NODE, kvm=True, log=console.print)
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    helm = [str(localcluster.bin_dir() / "helm"), f"--kubeconfig={state.kubeconfig}", "-n", namespace]
    on_node = {"kubernetes.io/hostname": NODE}
    values = {
        "operator": {"watchNamespaces": [namespace], "nodeSelector": on_node, "peering": {"name": namespace}},
        "gateway": {"enabled": True, "nodeSelector": on_node},
    }
    values_file = paths.root / "bench-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    tarsnode = yaml.safe_load((ROOT / "examples" / "tarsnode.yaml").read_text())
    tarsnode["spec"]["nodeSelector"] = on_node
    # The builtin models the image carries prebuilt; the GPT-2 ones load file:// checkpoints that a
    # fresh node does not have (the demo writes synthetic ones first).
    models = [
        d
        for d in yaml.safe_load_all((ROOT / "examples" / "models.yaml").read_text())
        if d and not str(d["spec"].get("source", "")).startswith("file://")
    ]
    sentiment = next(m for m in models if m["spec"].get("kind") == "sentiment")
    try:
        started = time.monotonic()
        subprocess.run([*helm, "install", "tars", str(CHART), "--create-namespace", "-f", str(values_file)], check=True)
        apply(state, namespace, [tarsnode])
        agent_ip = wait(lambda: ready_pod_ip(state, namespace, "app.kubernetes.io/name=tars-agent"), 300, "agent pod")
        agent_ready_s = time.monotonic() - started
        idle_mib = rss_mib(agent_ip)  # one scrape, a few ms, before any model arrives
        apply(state, namespace, [sentiment])
        gateway_ip = wait(lambda: ready_pod_ip(state, namespace, "app.kubernetes.io/component=gateway"), 300, "gateway")
        url = f"http://{gateway_ip}:8000/v2/models/{sentiment['metadata']['name']}/infer"
        wait(lambda: post(url, SENTIMENT, timeout=10)[0] == 200, 300, "the first answer")
        first_answer_s = time.monotonic() - started
        ready_s: dict[str, float] = {}
        for model in (m for m in models if m is not sentiment):
            name = model["metadata"]["name"]
            applied = time.monotonic()
            apply(state, namespace, [model])
            wait(lambda name=name: model_ready(state, namespace, name), 300, f"{name} Ready")
            ready_s[name] = time.monotonic() - applied
        loaded_mib = rss_mib(agent_ip)
    finally:
        subprocess.run([*helm, "uninstall", "tars", "--wait"], check=False)
        localcluster.kubectl(state, "delete", "namespace", namespace, "--wait=false", check=False)
        realnode.stop(paths, log=console.print)
        localcluster.kubectl(state, "delete", "node", NODE, "--wait=false", check=False)

    table = Table("figure", "value", title="helm install on a real local node")
    table.add_row("helm install -> agent pod ready", f"{agent_ready_s:.1f} s")
    goal = f"(goal {GOAL_FIRST_ANSWER_S:.0f} s)"
    table.add_row("helm install -> first answer (gateway pod)", f"{first_answer_s:.1f} s {goal}")
    table.add_row("agent RSS idle", f"{idle_mib:.0f} MiB")
    table.add_row(f"agent RSS with {len(models)} models", f"{loaded_mib:.0f} MiB")
    for name, seconds in ready_s.items():
        table.add_row(f"{name}: apply -> Ready", f"{seconds * 1000:.0f} ms")
    console.print(table)
    print(
        json.dumps(
            {
                "bench": "install",
                "install_to_agent_ready_s": round(agent_ready_s, 2),
                "install_to_first_answer_s": round(first_answer_s, 2),
                "agent_rss_idle_mib": round(idle_mib, 1),
                "agent_rss_models_mib": round(loaded_mib, 1),
                "model_apply_to_ready_ms": {k: round(v * 1000) for k, v in ready_s.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
