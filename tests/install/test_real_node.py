"""`helm install` onto the local cluster with a real node, the way a user runs TARS.

The chart's operator and gateway pods, and the agent DaemonSet's pod, are real containers from the
image `make images` built, run by containerd on a kubelet of the control plane's own release. The
scenarios run in order on one installation, as someone trying the chart would live through them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tarsctl import localcluster, realnode
from tarsctl.fleet import SteadyLoad, post
from tests.fixtures import REPO, ControlPlane, eventually
from tests.install.conftest import REAL_NODE

pytestmark = pytest.mark.cluster

CHART = REPO / "charts" / "tars-operator"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
IMAGE = f"ghcr.io/tars-hyperlight/tars:{APP_VERSION}"
RELEASE = "tars"
SENTIMENT_REQUEST = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["I love this!"]}]}
NO_KVM_NODE = "tars-sim-nokvm"
GATEWAY = "app.kubernetes.io/component=gateway"


@dataclass
class Install:
    plane: ControlPlane
    namespace: str
    node: realnode.NodePaths
    values: Path
    installed_in_s: float

    def get(self, *args: str) -> Any:
        return json.loads(self.plane.kubectl("get", *args, "-n", self.namespace, "-o", "json").stdout)

    def pods(self, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("pods", "-l", selector)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def ready_pods(self, selector: str) -> list[dict[str, Any]]:
        return [p for p in self.pods(selector) if _ready(p)]

    def helm(self, *args: str) -> str:
        return self.plane.helm(*args, "-n", self.namespace).stdout

    def client_headers(self) -> dict[str, str]:
        """Credentials of a ServiceAccount of the models' namespace: access defaults to `namespace`."""
        self.plane.kubectl("create", "serviceaccount", "client", "-n", self.namespace, check=False)
        token = self.plane.kubectl("create", "token", "client", "-n", self.namespace).stdout.strip()
        return {"Authorization": f"Bearer {token}"}

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any]:
        conditions = self.get(kind, name).get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == type_), {})


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def _values(namespace: str) -> dict[str, Any]:
    on_real_node = {"kubernetes.io/hostname": REAL_NODE}
    return {
        # Only this namespace: other test modules leave TarsNodes behind in theirs.
        "operator": {"watchNamespaces": [namespace], "nodeSelector": on_real_node, "peering": {"name": namespace}},
        "gateway": {"enabled": True, "nodeSelector": on_real_node},
        "samples": {"enabled": True, "nodeSelector": on_real_node},
    }


@pytest.fixture(scope="module")
def install(
    control_plane: ControlPlane, real_node: realnode.NodePaths, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Install]:
    namespace = f"install-{uuid.uuid4().hex[:6]}"
    values = tmp_path_factory.mktemp("helm") / "values.yaml"
    values.write_text(yaml.safe_dump(_values(namespace)))
    started = time.monotonic()
    control_plane.helm(
        *("install", RELEASE, str(CHART), "-n", namespace, "--create-namespace"),
        *("-f", str(values), "--wait", "--timeout=5m"),
    )
    installed = Install(control_plane, namespace, real_node, values, time.monotonic() - started)
    yield installed
    control_plane.helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False)
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _agent_pod(install: Install) -> dict[str, Any]:
    def one_ready() -> dict[str, Any]:
        pods = install.ready_pods("app.kubernetes.io/name=tars-agent,tars.hyperlight.dev/tarsnode=tars-node")
        return pods[0] if len(pods) == 1 else {}

    return eventually(one_ready, timeout=180, what="one ready agent pod")


def test_operator_pods_run_from_the_image_and_one_leads(install: Install) -> None:
    pods = install.ready_pods("app.kubernetes.io/component=operator")
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    for pod in pods:
        assert pod["spec"]["nodeName"] == REAL_NODE
        assert pod["spec"]["containers"][0]["image"] == IMAGE
        assert pod["status"]["containerStatuses"][0]["imageID"], "the runtime reports the image it ran"
    # watchNamespaces is set, so the chart made a namespaced KopfPeering in each watched namespace.
    peering = install.get("kopfpeering", install.namespace)
    priorities = sorted(peer["priority"] for peer in peering.get("status", {}).values())
    assert len(priorities) == 2 and priorities[0] != priorities[1], peering.get("status")

    def active_pods() -> list[str] | None:
        names = [p["metadata"]["name"] for p in pods]
        logs = {name: install.plane.kubectl("logs", "-n", install.namespace, name).stdout for name in names}
        # A replica starts paused and resumes only once it found no peer of higher priority; one that
        # acted first pauses when a higher one joins. What counts is where each one ended up.
        active = [
            name
            for name, text in logs.items()
            if text.rfind("Resuming operations after the pause") > text.rfind("Pausing operations in favour of")
        ]
        return active if len(active) == 1 else None

    # The lower priority waits; the other acts (it is the one whose reconciles created the agents).
    eventually(active_pods, timeout=60, what="exactly one operator pod active, the other paused")


def test_agent_pod_runs_on_the_real_node_with_dev_kvm(install: Install) -> None:
    pod = _agent_pod(install)
    assert pod["spec"]["nodeName"] == REAL_NODE
    mounts = {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert "/dev/kvm" in mounts
    assert pod["status"]["podIP"].startswith(realnode.POD_SUBNET.rsplit(".", 2)[0])
    metadata = _get_json(f"http://{pod['status']['podIP']}:8080/v2")
    # /dev/kvm here is paravirtual (or not open to the non-root agent): the agent says why it chose Wasmtime.
    assert metadata["backend"] == "wasmtime", metadata
    assert metadata["backend_reason"], metadata
    status = install.get("tarsnode", "tars-node")["status"]
    assert status["readyAgents"] == 1 and status["agents"][0]["node"] == REAL_NODE, status

    def renewed() -> bool:
        leases = install.get("leases", "-l", "app.kubernetes.io/name=tars-agent")["items"]
        return bool(leases) and all(lease["spec"].get("renewTime") for lease in leases)

    eventually(renewed, timeout=30, what="the agent's Lease")

    def renew_time() -> str:
        lease: dict[str, Any] = install.get("leases", "-l", "app.kubernetes.io/name=tars-agent")["items"][0]
        return str(lease["spec"]["renewTime"])

    first = renew_time()
    eventually(lambda: renew_time() != first, timeout=30, what="a Lease heartbeat")


def test_a_model_answers_through_the_gateway_pod_and_at_the_agent_pod(install: Install) -> None:
    agent = _agent_pod(install)
    gateway = eventually(lambda: install.ready_pods(GATEWAY), timeout=120, what="a ready gateway pod")[0]
    eventually(
        lambda: install.condition("tarsmodel", "sentiment", "Ready").get("status") == "True",
        timeout=180,
        what="TarsModel sentiment Ready",
    )
    url = "/v2/models/sentiment/infer"
    for address in (f"{gateway['status']['podIP']}:8000", f"{agent['status']['podIP']}:8080"):
        # Secure by default: no credentials, no answer; a caller from the model's namespace gets one.
        assert post(f"http://{address}{url}", SENTIMENT_REQUEST)[0] == 401
        status, body = post(f"http://{address}{url}", SENTIMENT_REQUEST, headers=install.client_headers())
        assert status == 200, (address, body)
        assert body["model_name"] == "sentiment" and body["outputs"], body


def test_a_node_without_the_kvm_label_gets_no_agent(install: Install) -> None:
    localcluster.add_node(install.plane.state, NO_KVM_NODE, kvm=False)
    tarsnode = {
        "apiVersion": "tars.hyperlight.dev/v1alpha1",
        "kind": "TarsNode",
        "metadata": {"name": "no-kvm", "namespace": install.namespace},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": NO_KVM_NODE}},
    }
    install.plane.kubectl("apply", "-f", "-", input=json.dumps(tarsnode))

    def no_kvm_nodes() -> dict[str, Any]:
        # A first reconcile may fail on a passing API error and be retried: wait for the verdict.
        cond = install.condition("tarsnode", "no-kvm", "Ready")
        return cond if cond.get("reason") == "NoKVMNodes" else {}

    ready = eventually(no_kvm_nodes, timeout=90, what="no-kvm: Ready=False NoKVMNodes")
    assert ready["status"] == "False", ready
    nodes = len(install.plane.get_json("nodes")["items"])
    assert f"0 of {nodes} nodes eligible" in ready["message"], ready
    assert install.get("tarsnode", "no-kvm")["status"]["desiredAgents"] == 0
    eventually(
        lambda: f"1 of {nodes} nodes eligible" in install.condition("tarsnode", "tars-node", "Ready")["message"],
        timeout=60,
        what=f"tars-node: 1 of {nodes} nodes eligible (a new Node is counted)",
    )
    assert not install.pods("tars.hyperlight.dev/tarsnode=no-kvm")
    install.plane.kubectl("delete", "tarsnode", "no-kvm", "-n", install.namespace)
    install.plane.kubectl("delete", "node", NO_KVM_NODE, "--wait=false")


def _tarsnode(install: Install, name: str, agent: dict[str, Any]) -> None:
    body = {
        "apiVersion": "tars.hyperlight.dev/v1alpha1",
        "kind": "TarsNode",
        "metadata": {"name": name, "namespace": install.namespace},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": REAL_NODE}, "agent": agent},
    }
    install.plane.kubectl("apply", "-f", "-", input=json.dumps(body))


def _pods_healthy(install: Install, name: str, reasons: set[str]) -> dict[str, Any]:
    def failing() -> dict[str, Any]:
        cond = install.condition("tarsnode", name, "PodsHealthy")
        return cond if cond.get("status") == "False" and cond.get("reason") in reasons else {}

    return eventually(failing, timeout=180, what=f"{name}: PodsHealthy=False with one of {reasons}")


def test_a_wrong_image_and_a_crashing_agent_show_in_conditions_and_tarsctl_status(install: Install) -> None:
    try:
        _tarsnode(install, "wrong-tag", {"image": f"{IMAGE.rsplit(':', 1)[0]}:no-such-tag", "port": 8091})
        cond = _pods_healthy(install, "wrong-tag", {"ErrImagePull", "ImagePullBackOff"})
        assert "no-such-tag" in cond["message"] and "Next: check spec.agent.image" in cond["message"], cond
        # A TLS Secret whose key is not a key: the agent exits at start, again and again.
        secret = {"tls.crt": "bm90IGEgY2VydA==", "tls.key": "bm90IGEga2V5"}
        install.plane.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "broken-tls", "namespace": install.namespace},
                    "type": "Opaque",
                    "data": secret,
                }
            ),
        )
        _tarsnode(install, "crashing", {"tlsSecretName": "broken-tls", "port": 8092})
        cond = _pods_healthy(install, "crashing", {"CrashLoopBackOff", "Error"})
        assert "kubectl logs" in cond["message"], cond

        def both_faults_named() -> subprocess.CompletedProcess[str] | None:
            # Each TarsNode's conditions follow its own pods' events: wait until both are shown at once.
            command = [sys.executable, "-m", "tarsctl.main", "status", "-n", install.namespace]
            result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=install.plane.env)
            named = "Next: check spec.agent.image" in result.stdout and "kubectl logs" in result.stdout
            return result if named else None

        result = eventually(both_faults_named, timeout=90, what="tarsctl status naming both faults and what to do")
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"TarsNode {install.namespace}/wrong-tag: NOT OK" in result.stdout, result.stdout
        assert f"TarsNode {install.namespace}/crashing: NOT OK" in result.stdout, result.stdout
    finally:
        # Always: their agent pods take the real node's CPU requests, and the next test rolls the agent.
        for name in ("wrong-tag", "crashing"):
            install.plane.kubectl(
                "delete", "tarsnode", name, "-n", install.namespace, "--ignore-not-found", check=False
            )


def test_helm_upgrade_rolls_the_agents_while_a_client_sees_no_failure(install: Install) -> None:
    before = _agent_pod(install)
    gateway = install.ready_pods(GATEWAY)[0]
    url = f"http://{gateway['status']['podIP']}:8000/v2/models/sentiment/infer"
    with SteadyLoad(url, SENTIMENT_REQUEST, headers=install.client_headers()) as load:
        install.helm("upgrade", RELEASE, str(CHART), "--reuse-values", "--set", "samples.warmPoolSize=3", "--wait")

        def rolled() -> dict[str, Any] | None:
            after = _agent_pod(install)
            return after if after["metadata"]["uid"] != before["metadata"]["uid"] else None

        eventually(rolled, timeout=240, what="the agent pod replaced")
        eventually(
            lambda: install.condition("tarsmodel", "sentiment", "Ready").get("status") == "True",
            timeout=120,
            what="sentiment Ready again",
        )
        time.sleep(2)
    assert load.statuses[200] > 10, load.statuses
    assert not load.errors, load.errors[:5]


def test_helm_uninstall_removes_the_release_and_keeps_the_crds(install: Install) -> None:
    install.helm("uninstall", RELEASE, "--wait")
    eventually(lambda: not install.pods("app.kubernetes.io/component=operator"), timeout=120, what="operator pods gone")
    assert not install.get("deployments")["items"]
    assert install.plane.kubectl("get", "clusterrole", f"{RELEASE}-tars-operator", check=False).returncode != 0
    assert install.plane.kubectl("get", "crd", "tarsnodes.tars.hyperlight.dev", check=False).returncode == 0
