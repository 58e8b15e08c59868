"""Shared code of the Helm chart tests: find the helm binary, render the chart, read the manifests.

helm comes from the local control-plane build (hack/build-control-plane.sh) in TARS_BIN_DIR or the
per-version cache (hack/build-control-plane.sh builds it; `make test` runs that first).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tars-operator"
DEFAULT_K8S_VERSION = "v1.37.2"
RELEASE = "tars"
NAMESPACE = "tars-system"


def bin_dir() -> Path:
    if os.environ.get("TARS_BIN_DIR"):
        return Path(os.environ["TARS_BIN_DIR"])
    try:
        from tarsctl import localcluster

        return Path(localcluster.bin_dir())
    except Exception:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        return cache / "tars" / "bin" / DEFAULT_K8S_VERSION


def kube_version(directory: Path) -> str:
    """The Kubernetes version the binaries were built for, from the cache directory's name.

    Passed to `helm template --kube-version`: a helm built from the module proxy without helm's
    release ldflags assumes Kubernetes v1.20, older than the chart's kubeVersion constraint.
    """
    match = re.fullmatch(r"v?(\d+\.\d+\.\d+)", directory.name)
    return match.group(1) if match else DEFAULT_K8S_VERSION.lstrip("v")


class Helm:
    def __init__(self, binary: Path, version: str) -> None:
        self.binary = binary
        self.kube_version = version

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            timeout=120,
            # Keep helm away from any user kubeconfig or repository cache: rendering is offline.
            env={**os.environ, "KUBECONFIG": os.devnull, "HELM_CACHE_HOME": tempfile.gettempdir() + "/tars-helm-cache"},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    def template_args(self, values: dict[str, Any] | None, *extra: str) -> list[str]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", self.kube_version]
        if values is not None:
            args += ["--values", values_file(values)]
        return [*args, *extra]

    def template(self, values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
        out = self.run(*self.template_args(values, *extra)).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def template_error(self, values: dict[str, Any] | None = None, *extra: str) -> str:
        result = self.run(*self.template_args(values, *extra), check=False)
        assert result.returncode != 0, "helm template accepted values it should reject"
        return result.stderr


# One directory per test process, removed when the process exits: the files must outlive the call
# that writes them (helm reads them later), and hundreds of them were left in /tmp by every run.
_VALUES_DIR = tempfile.TemporaryDirectory(prefix="tars-values-")


def values_file(values: dict[str, Any]) -> str:
    # JSON is YAML, and unlike --set it keeps floats and nested maps exactly.
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=_VALUES_DIR.name, delete=False) as f:
        json.dump(values, f)
    return f.name


def find_helm() -> Helm | None:
    directory = bin_dir()
    binary = directory / "helm"
    return Helm(binary, kube_version(directory)) if binary.exists() else None


# Everything optional switched on, and several values away from their defaults.
FULL_VALUES: dict[str, Any] = {
    "commonLabels": {"team": "ml-platform"},
    "image": {"digest": "sha256:" + "0123456789abcdef" * 4},
    "imagePullSecrets": [{"name": "registry"}],
    "operator": {
        "replicas": 3,
        "watchNamespaces": ["team-a", "team-b"],
        "logLevel": "debug",
        "extraArgs": ["--log-level=debug"],
        "extraEnv": [{"name": "EXTRA", "value": "1"}],
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "control", "effect": "NoSchedule"}],
        "podAnnotations": {"example.com/owner": "ml-platform"},
    },
    "serviceMonitor": {
        "enabled": True,
        "labels": {"release": "kube-prometheus-stack"},
        "agents": {"namespaces": ["team-a"]},
    },
    "prometheusRule": {
        "enabled": True,
        "labels": {"release": "kube-prometheus-stack"},
        "guestFailureRatio": {"threshold": 0.1},
        "latency": {"sloSeconds": 2, "modelSloSeconds": {"sentiment": 0.05, "tars-reasoning": 5}},
        "additionalRules": [{"record": "tars:requests:rate5m", "expr": "sum(rate(tars_agent_requests_total[5m]))"}],
    },
    "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    "samples": {"enabled": True, "platform": "Wasmtime"},
    "gateway": {"enabled": True, "replicas": 2},
}


def find(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(manifests: list[dict[str, Any]]) -> set[str]:
    return {m["kind"] for m in manifests}


# What the per-TarsNode agent Role holds, until tars_operator.builders.AGENT_RULES is importable.
# RBAC refuses to let the operator grant a permission it does not hold itself (it has no escalate
# verb), so the operator's rules must cover all of these.
FALLBACK_AGENT_RULES: list[dict[str, list[str]]] = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "create", "update", "patch", "delete"],
    },
    {"apiGroups": ["tars.hyperlight.dev"], "resources": ["tarsmodels"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]


def agent_rules() -> list[Any]:
    try:
        from tars_operator.builders import AGENT_RULES
    except ImportError:
        return FALLBACK_AGENT_RULES
    return list(AGENT_RULES)
