"""Pure functions from a TarsNode to the objects that run it. No API calls here.

Every builder returns a complete object as the operator wants it to be; the reconciler applies it
with server-side apply, so fields that other controllers own (status, defaults) are left alone.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml

from tars_api import API_VERSION, GROUP, TarsNode
from tars_api.labels import (
    AGENT_CONFIG_KEY,
    CONFIG_HASH_ANNOTATION,
    KVM_LABEL,
    NAMESPACE_LABEL,
    agent_selector,
    node_labels,
)

AGENT_CONFIG_DIR = "/etc/tars"
MODELS_HOST_PATH = "/var/lib/tars/models"
AGENT_UID = 65532
TLS_DIR = "/var/run/tars/tls"  # not under the read-only config mount
STATE_DIR = "/var/lib/tars-agent"  # the agent's durable state: spec.knowledge.stateHostPath on the node


def owner_reference(obj: TarsNode | Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": obj.kind,
        "name": obj.metadata.name,
        "uid": obj.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(tn: TarsNode, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": tn.metadata.namespace,
        "labels": node_labels(tn.metadata.name),
        "ownerReferences": [owner_reference(tn)],
        **extra,
    }


def agent_name(tn: TarsNode) -> str:
    return f"{tn.metadata.name}-agent"


def agent_config(tn: TarsNode) -> dict[str, Any]:
    """What the agent reads at start-up (tars_agent's --config file), rendered from the spec."""
    spec = tn.spec
    forced = {"HyperlightMicroVM": "hyperlight", "Wasmtime": "wasmtime"}.get(spec.platform.type, "auto")
    return {
        "tarsNode": tn.metadata.name,
        "namespace": tn.metadata.namespace,
        "port": spec.agent.port,
        "grpcPort": spec.agent.grpc_port,
        "nativeHttp": spec.agent.native_http,
        "backend": forced,
        "hyperlightVersion": spec.platform.hyperlight_version,
        "capacityMiB": spec.agent.model_memory_mi_b,
        "warmPoolSize": spec.warm_pool_size,
        "logLevel": spec.agent.log_level,
        "capabilities": list(spec.capabilities),
        "sandbox": spec.sandbox.wire(),
        # Where file:// sources may load from; the agent refuses every other path (none by default).
        "modelRoots": list(spec.model_roots),
        "auth": {"mode": "auto", "defaultAccess": spec.agent.default_access},
        # The DSN of the postgres backend reaches the agent as TARS_KNOWLEDGE_DSN from its Secret.
        "knowledge": {
            "backend": spec.knowledge.backend,
            "stateDir": STATE_DIR,
            "deletionGracePeriod": spec.knowledge.deletion_grace_period,
        },
        **(
            {"tls": {"certFile": f"{TLS_DIR}/tls.crt", "keyFile": f"{TLS_DIR}/tls.key"}}
            if spec.agent.tls_secret_name
            else {}
        ),
    }


def desired_configmap(tn: TarsNode) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(tn, agent_name(tn)),
        "data": {AGENT_CONFIG_KEY: yaml.safe_dump(agent_config(tn), sort_keys=True)},
    }


def config_hash(tn: TarsNode) -> str:
    """Changes whenever the agent configuration does, so the DaemonSet rolls its pods."""
    return hashlib.sha256(json.dumps(agent_config(tn), sort_keys=True).encode()).hexdigest()[:16]


def desired_service_account(tn: TarsNode) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(tn, agent_name(tn))}


# Exactly what tars_agent calls: its own Lease (heartbeat), the TarsModels it serves, the ConfigMaps
# that hold users' functions (configmap:// sources), and Events.
AGENT_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "create", "update", "patch", "delete"],
    },
    {"apiGroups": [GROUP], "resources": ["tarsmodels"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]


def desired_role(tn: TarsNode) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(tn, agent_name(tn)),
        "rules": AGENT_RULES,
    }


def desired_role_binding(tn: TarsNode) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(tn, agent_name(tn)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": agent_name(tn)},
        "subjects": [{"kind": "ServiceAccount", "name": agent_name(tn), "namespace": tn.metadata.namespace}],
    }


AUTH_DELEGATOR = "system:auth-delegator"


def auth_binding_name(namespace: str, name: str) -> str:
    return f"tars-agent-auth.{namespace}.{name}"


def desired_auth_binding(tn: TarsNode) -> dict[str, Any]:
    """Lets the agents verify callers' ServiceAccount tokens (TokenReview), which only a cluster-wide
    binding can grant. It binds the built-in system:auth-delegator role, so the operator needs no
    ClusterRole of its own. Cluster-scoped objects cannot be owned by a namespaced TarsNode: the
    operator deletes it when the TarsNode goes, and sweeps any left while it was not running."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": auth_binding_name(tn.metadata.namespace, tn.metadata.name),
            "labels": {**node_labels(tn.metadata.name), NAMESPACE_LABEL: tn.metadata.namespace},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AUTH_DELEGATOR},
        "subjects": [{"kind": "ServiceAccount", "name": agent_name(tn), "namespace": tn.metadata.namespace}],
    }


def desired_service(tn: TarsNode) -> dict[str, Any]:
    """Headless: one DNS record per agent, so callers (and the gateway) can reach each one."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(tn, agent_name(tn)),
        "spec": {
            "clusterIP": "None",
            "selector": agent_selector(tn.metadata.name),
            "ports": [
                {"name": "http", "port": tn.spec.agent.port, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": tn.spec.agent.grpc_port, "targetPort": "grpc", "protocol": "TCP"},
            ],
            "publishNotReadyAddresses": False,
        },
    }


def desired_pdb(tn: TarsNode) -> dict[str, Any]:
    """A voluntary disruption (drain, upgrade) takes one agent at a time, so models move, not vanish."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(tn, agent_name(tn)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": agent_selector(tn.metadata.name)}},
    }


def _probe(path: str, period: int, failures: int, tls: bool) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http", **({"scheme": "HTTPS"} if tls else {})},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def state_dir_owner(image: str, pull_policy: str) -> dict[str, Any]:
    """Gives the node's state directory to the agent's user: a hostPath is created root-owned and
    fsGroup does not apply to it. Root with CAP_CHOWN only, nothing else."""
    # Once given, the directory is left alone: root without CAP_FOWNER may not chmod what it no longer
    # owns, and every later start of the pod runs this again.
    give = (
        "import os, sys\n"
        "path, uid = sys.argv[1], int(sys.argv[2])\n"
        "if os.stat(path).st_uid != uid:\n"
        "    os.chmod(path, 0o700)\n"
        "    os.chown(path, uid, uid)\n"
    )
    return {
        "name": "state-owner",
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["python3", "-c", give, STATE_DIR, str(AGENT_UID)],
        "volumeMounts": [{"name": "state", "mountPath": STATE_DIR}],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def _knowledge_env(tn: TarsNode) -> list[dict[str, Any]]:
    ref = tn.spec.knowledge.dsn_secret_ref
    if tn.spec.knowledge.backend != "postgres" or ref is None:
        return []
    return [{"name": "TARS_KNOWLEDGE_DSN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def desired_daemonset(tn: TarsNode) -> dict[str, Any]:
    spec, name = tn.spec, agent_name(tn)
    port = spec.agent.port
    tls = spec.agent.tls_secret_name is not None
    pod_labels = node_labels(tn.metadata.name)
    container = {
        "name": "agent",
        "image": spec.agent.image,
        "imagePullPolicy": spec.agent.image_pull_policy,
        # The image carries every TARS program (operator, agent, gateway); this pod runs the agent.
        "command": ["tars-agent"],
        "args": ["--config", f"{AGENT_CONFIG_DIR}/{AGENT_CONFIG_KEY}"],
        "env": [
            _field_env("NODE_NAME", "spec.nodeName"),
            _field_env("POD_IP", "status.podIP"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            _field_env("POD_NAME", "metadata.name"),
            *_knowledge_env(tn),
        ],
        "ports": [
            {"name": "http", "containerPort": port, "protocol": "TCP"},
            {"name": "grpc", "containerPort": spec.agent.grpc_port, "protocol": "TCP"},
        ],
        "resources": spec.agent.resources.wire(),
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3, tls=tls),
        "readinessProbe": _probe("/v2/health/ready", period=2, failures=1, tls=tls),
        "volumeMounts": [
            {"name": "config", "mountPath": AGENT_CONFIG_DIR, "readOnly": True},
            {"name": "kvm", "mountPath": "/dev/kvm"},
            {"name": "cache", "mountPath": "/var/cache/tars"},
            # The root filesystem is read-only; Python's tempfile (guest builds, uploads) needs /tmp.
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "models", "mountPath": MODELS_HOST_PATH, "readOnly": True},
            {"name": "state", "mountPath": STATE_DIR},
            *([{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}] if tls else []),
        ],
        "securityContext": {
            # Guests are isolated by the sandbox; the agent itself needs no privilege beyond the
            # /dev/kvm device, which a device plugin or the kvm group grants.
            "runAsNonRoot": True,
            "runAsUser": AGENT_UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _meta(tn, name),
        "spec": {
            "selector": {"matchLabels": agent_selector(tn.metadata.name)},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                        "prometheus.io/path": "/metrics",
                        CONFIG_HASH_ANNOTATION: config_hash(tn),
                    },
                },
                "spec": {
                    "serviceAccountName": name,
                    "nodeSelector": {**spec.node_selector, KVM_LABEL: "true"},
                    "tolerations": [t.wire() for t in spec.tolerations],
                    # Drain finishes in-flight requests and releases the Lease before exit.
                    "terminationGracePeriodSeconds": 30,
                    # runAsNonRoot is per container: only the state directory's init container is root.
                    "securityContext": {"fsGroup": AGENT_UID},
                    "initContainers": [state_dir_owner(spec.agent.image, spec.agent.image_pull_policy)],
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": name}},
                        {"name": "kvm", "hostPath": {"path": "/dev/kvm", "type": "CharDevice"}},
                        {"name": "cache", "emptyDir": {"sizeLimit": "2Gi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                        {"name": "models", "hostPath": {"path": MODELS_HOST_PATH, "type": "DirectoryOrCreate"}},
                        # Survives the pod (a restart reloads the node's knowledge documents from it).
                        {
                            "name": "state",
                            "hostPath": {"path": spec.knowledge.state_host_path, "type": "DirectoryOrCreate"},
                        },
                        *([{"name": "tls", "secret": {"secretName": spec.agent.tls_secret_name}}] if tls else []),
                    ],
                },
            },
        },
    }


def desired_children(tn: TarsNode) -> list[dict[str, Any]]:
    """Everything a TarsNode owns, in the order they should be applied (RBAC before the pods use it)."""
    return [
        desired_service_account(tn),
        desired_role(tn),
        desired_role_binding(tn),
        desired_auth_binding(tn),
        desired_configmap(tn),
        desired_service(tn),
        desired_pdb(tn),
        desired_daemonset(tn),
    ]
