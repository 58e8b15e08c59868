"""Every permission the operator uses, and why. The Helm chart's ClusterRole must equal this list
(tests/helm/test_helm_rbac.py); an unused permission or a missing one fails that test."""

from __future__ import annotations

from typing import Any

_CHILD_VERBS = ["get", "list", "watch", "create", "patch"]  # watched for drift, server-side applied

OPERATOR_RULES: list[dict[str, Any]] = [
    # The custom resources: watched and indexed by kopf; spec.replicas written through /scale by the
    # autoscaler; status written by the reconcilers.
    {
        "apiGroups": ["tars.hyperlight.dev"],
        "resources": ["tarsnodes", "tarsmodels"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {
        "apiGroups": ["tars.hyperlight.dev"],
        "resources": ["tarsnodes/status", "tarsmodels/status"],
        "verbs": ["get", "patch"],
    },
    {"apiGroups": ["tars.hyperlight.dev"], "resources": ["tarsmodels/scale"], "verbs": ["get", "patch"]},
    # kopf peering, so that of two replicas one acts.
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings", "kopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    # Children of a TarsNode (and a TarsModel's Service).
    {"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": _CHILD_VERBS},
    {"apiGroups": [""], "resources": ["services", "serviceaccounts", "configmaps"], "verbs": _CHILD_VERBS},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": _CHILD_VERBS},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": _CHILD_VERBS},
    # Per TarsNode, a binding of the built-in system:auth-delegator to its agents (TokenReview), deleted
    # with the TarsNode (and swept if it was deleted while no operator ran). The API server lets the
    # operator bind only what it holds itself: the two review permissions below, nothing else.
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["clusterrolebindings"],
        # watch: the orphan sweep is an event handler on the agents' auth bindings.
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    # A TarsModel's EndpointSlices: applied, listed to prune those no longer wanted, deleted.
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["get", "list", "create", "patch", "delete"],
    },
    # Agents' heartbeats are read; the verbs the agents' Role grants on Leases must be held too,
    # because the API server refuses to let anyone grant what it does not have.
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
    # Nodes: health and zones for placement; the operator labels each with its agent's backend.
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
    # Agent pods' container states (image pulls, crash loops) for the TarsNode's PodsHealthy condition.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    # kopf lists and watches namespaces to resolve the namespaces it serves (watchNamespaces).
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    # Events: kopf posts them, and so does the operator on meaningful changes.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    # kopf discovers served resources (and notices CRDs installed after it started).
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
]
