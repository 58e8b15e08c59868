"""Label and annotation keys, and the agent's configuration key: the names every TARS program and
tarsctl agree on, defined once. (The agent Lease's annotations live with the rest of that contract in
:mod:`tars_api.lease`.)"""

from __future__ import annotations

from tars_api.meta import GROUP

PREFIX = f"{GROUP}/"

# Kubernetes' recommended labels.
MANAGED_BY = "app.kubernetes.io/managed-by"
PART_OF = "app.kubernetes.io/part-of"
NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
OPERATOR = "tars-operator"
FIELD_MANAGER = "tars-operator"
AGENT_APP = "tars-agent"  # app.kubernetes.io/name of agent pods and agent Leases
MODEL_APP = "tars-model"

TARSNODE_LABEL = PREFIX + "tarsnode"
MODEL_LABEL = PREFIX + "model"
NODE_LABEL = PREFIX + "node"  # on agent Leases: the node the agent runs on
NAMESPACE_LABEL = PREFIX + "namespace"  # on cluster-scoped children, which have no namespace
KVM_LABEL = PREFIX + "kvm"  # on Nodes: "true" where agents may run
BACKEND_LABEL = PREFIX + "backend"  # on Nodes: the sandbox backend its agent chose
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
# EndpointSlices the operator writes for models; the gateway discovers agents through them.
OPERATOR_SLICES = f"{SLICE_MANAGED_BY}={OPERATOR}"

# On the agent DaemonSet's pod template: a changed agent configuration rolls the agents.
CONFIG_HASH_ANNOTATION = PREFIX + "config-hash"
GENERATED_BY_ANNOTATION = PREFIX + "generated-by"  # on generated CRDs

# The key of the agent's configuration (a TarsNode YAML) in the ConfigMap the operator writes.
AGENT_CONFIG_KEY = "agent.yaml"


def node_labels(tarsnode: str) -> dict[str, str]:
    """Labels on every child of a TarsNode; the selector of its agent pods is a subset."""
    return {
        NAME: AGENT_APP,
        INSTANCE: tarsnode,
        COMPONENT: "node-agent",
        PART_OF: "tars",
        MANAGED_BY: OPERATOR,
        TARSNODE_LABEL: tarsnode,
    }


def agent_selector(tarsnode: str) -> dict[str, str]:
    return {NAME: AGENT_APP, TARSNODE_LABEL: tarsnode}


def model_labels(tarsnode: str, model: str) -> dict[str, str]:
    return {
        NAME: MODEL_APP,
        INSTANCE: model,
        PART_OF: "tars",
        MANAGED_BY: OPERATOR,
        TARSNODE_LABEL: tarsnode,
        MODEL_LABEL: model,
    }
