"""The chart against the real local kube-apiserver: the API server accepts what it renders, and
`helm install` / `helm uninstall` create and remove the operator's objects.

Uses tests/fixtures.py's `control_plane` (which has already applied crds/) and `namespace`.
Release names and the peering name are unique per test, because ClusterRoles, ClusterRoleBindings
and the ClusterKopfPeering are cluster-scoped and would otherwise collide between tests.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml
from chart_support import CHART, agent_rules, kube_version, values_file

pytestmark = pytest.mark.cluster

CRDS = (
    "tarsnodes.tars.hyperlight.dev",
    "tarsmodels.tars.hyperlight.dev",
    "clusterkopfpeerings.kopf.dev",
    "kopfpeerings.kopf.dev",
)
# Kinds whose CRDs (Prometheus Operator) the local control plane does not have.
NOT_SERVED_HERE = {"ServiceMonitor", "PrometheusRule"}


def _render(plane: Any, release: str, namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    result = subprocess.run(
        [
            str(plane.bin_dir / "helm"),
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            kube_version(plane.bin_dir),
            "--values",
            values_file(values),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _server_dry_run(plane: Any, manifests: list[dict[str, Any]]) -> str:
    served = [m for m in manifests if m["kind"] not in NOT_SERVED_HERE]
    result = plane.kubectl(
        "apply",
        "--dry-run=server",
        "--server-side",
        "--field-manager=helm-test",
        "-f",
        "-",
        input=yaml.safe_dump_all(served),
        check=False,
    )
    assert result.returncode == 0, f"the API server rejected the rendered chart:\n{result.stderr}"
    return str(result.stdout)


def test_default_render_is_accepted_by_the_api_server(control_plane: Any, namespace: str) -> None:
    manifests = _render(control_plane, namespace, namespace, {"operator": {"peering": {"name": namespace}}})
    out = _server_dry_run(control_plane, manifests)
    assert "deployment.apps/" in out and "clusterrole.rbac.authorization.k8s.io/" in out


def test_everything_enabled_is_accepted_by_the_api_server(control_plane: Any, namespace: str) -> None:
    # Samples go through the real CRD schemas, CEL rules included; KopfPeering into the served namespace.
    values = {
        "operator": {"peering": {"name": namespace}, "watchNamespaces": [namespace], "replicas": 3},
        "samples": {"enabled": True},
        "gateway": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    }
    manifests = _render(control_plane, namespace, namespace, values)
    assert {"TarsNode", "TarsModel", "KopfPeering"} <= {m["kind"] for m in manifests}
    out = _server_dry_run(control_plane, manifests)
    assert "tarsnode.tars.hyperlight.dev/tars-node" in out


def test_api_server_rejects_an_invalid_sample_edit(control_plane: Any, namespace: str) -> None:
    # The chart's samples are only useful if the CRDs' own validation guards them; check it does.
    manifests = _render(
        control_plane,
        namespace,
        namespace,
        {"operator": {"peering": {"name": namespace}}, "samples": {"enabled": True}},
    )
    model = next(m for m in manifests if m["kind"] == "TarsModel")
    model["spec"]["source"] = "https://huggingface.co/some/model"
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(model), check=False)
    assert result.returncode != 0
    assert "spec.source" in result.stderr


def _exists(plane: Any, *args: str) -> bool:
    return bool(plane.kubectl("get", *args, "-o", "name", check=False).returncode == 0)


def test_helm_install_and_uninstall(control_plane: Any, namespace: str) -> None:
    release = namespace  # unique, and short enough for every derived name
    fullname = f"{release}-tars-operator"
    values = values_file({"operator": {"peering": {"name": namespace}}})
    control_plane.helm("install", release, str(CHART), "--namespace", namespace, "--values", values, "--timeout", "2m")
    try:
        status = json.loads(control_plane.helm("status", release, "--namespace", namespace, "-o", "json").stdout)
        assert status["info"]["status"] == "deployed"

        namespaced = [
            ("deployment", fullname),
            ("serviceaccount", fullname),
            ("service", f"{fullname}-metrics"),
            ("poddisruptionbudget", fullname),
        ]
        cluster_scoped = [
            ("clusterrole", fullname),
            ("clusterrolebinding", fullname),
            ("clusterkopfpeering.kopf.dev", namespace),
        ]
        for kind, name in namespaced:
            assert _exists(control_plane, "-n", namespace, kind, name), f"{kind}/{name} was not created"
        for kind, name in cluster_scoped:
            assert _exists(control_plane, kind, name), f"{kind}/{name} was not created"

        deployment = json.loads(
            control_plane.kubectl("get", "-n", namespace, "deployment", fullname, "-o", "json").stdout
        )
        assert deployment["spec"]["replicas"] == 2
        # The API server applied the restricted security context as rendered.
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True

        control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{name}" for name in CRDS])
    finally:
        control_plane.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "2m")

    for kind, name in namespaced:
        assert not _exists(control_plane, "-n", namespace, kind, name), f"{kind}/{name} survived uninstall"
    for kind, name in cluster_scoped:
        assert not _exists(control_plane, kind, name), f"{kind}/{name} survived uninstall"
    # Helm never deletes CRDs from crds/: that would delete every TarsNode and TarsModel with them.
    for name in CRDS:
        assert _exists(control_plane, "crd", name), f"crd/{name} was removed by helm uninstall"


def _role(namespace: str, name: str, rules: list[Any]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": namespace},
            "rules": rules,
        }
    )


def test_operator_may_grant_the_agents_role_and_nothing_more(control_plane: Any, namespace: str) -> None:
    """The API server's own escalation check, run as the operator's ServiceAccount: it may create the
    agents' Role (it holds every permission in it), and may not create one granting more."""
    release = namespace
    fullname = f"{release}-tars-operator"
    values = values_file({"operator": {"peering": {"name": namespace}}})
    control_plane.helm("install", release, str(CHART), "--namespace", namespace, "--values", values)
    operator = f"--as=system:serviceaccount:{namespace}:{fullname}"
    try:
        allowed = control_plane.kubectl(
            "create",
            "--dry-run=server",
            operator,
            "-f",
            "-",
            input=_role(namespace, "tars-agent", agent_rules()),
            check=False,
        )
        assert allowed.returncode == 0, f"the operator cannot create the agents' Role:\n{allowed.stderr}"

        secrets = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
        refused = control_plane.kubectl(
            "create", "--dry-run=server", operator, "-f", "-", input=_role(namespace, "too-much", secrets), check=False
        )
        assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()

        can_i = control_plane.kubectl("auth", "can-i", operator, "get", "secrets", "-n", namespace, check=False)
        assert can_i.stdout.strip() == "no"
    finally:
        control_plane.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "2m")
