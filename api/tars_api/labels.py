"""Label and annotation keys shared by the operator's builders and readers."""

from __future__ import annotations

from tars_api import GROUP

MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "tars-operator"
FIELD_MANAGER = "tars-operator"
PART_OF = "app.kubernetes.io/part-of"
NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"

TARSNODE_LABEL = f"{GROUP}/tarsnode"
MODEL_LABEL = f"{GROUP}/model"
NAMESPACE_LABEL = f"{GROUP}/namespace"  # on cluster-scoped children, which have no namespace
KVM_LABEL = f"{GROUP}/kvm"
BACKEND_LABEL = f"{GROUP}/backend"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"


def node_labels(tarsnode: str) -> dict[str, str]:
    """Labels on every child of a TarsNode; the selector of its agent pods is a subset."""
    return {
        NAME: "tars-agent",
        INSTANCE: tarsnode,
        COMPONENT: "node-agent",
        PART_OF: "tars",
        MANAGED_BY: OPERATOR,
        TARSNODE_LABEL: tarsnode,
    }


def agent_selector(tarsnode: str) -> dict[str, str]:
    return {NAME: "tars-agent", TARSNODE_LABEL: tarsnode}


def model_labels(tarsnode: str, model: str) -> dict[str, str]:
    return {
        NAME: "tars-model",
        INSTANCE: model,
        PART_OF: "tars",
        MANAGED_BY: OPERATOR,
        TARSNODE_LABEL: tarsnode,
        MODEL_LABEL: model,
    }
