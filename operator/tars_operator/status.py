"""Pure status computation for both kinds: what the operator reports, from what it observed."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from tars_api import TarsModel, TarsNode
from tars_api.labels import KVM_LABEL
from tars_operator.conditions import Cond
from tars_operator.placement import AgentView, PlacementResult
from tars_operator.podfaults import PodRecord, eligible_message, pods_condition
from tars_operator.routing import endpoint_url, model_key, selector


def tarsnode_status(
    tn: TarsNode,
    daemonset_status: dict[str, Any] | None,
    agents: list[AgentView],
    lost: list[str],
    pods: list[PodRecord] | None = None,
    nodes_total: int | None = None,
) -> tuple[dict[str, Any], list[Cond]]:
    """``pods`` (the agent pods' container states) adds the PodsHealthy condition; ``nodes_total``
    puts "N of M nodes eligible" in the Ready message."""
    ds = daemonset_status or {}
    desired = int(ds.get("desiredNumberScheduled", 0))
    ready_pods = int(ds.get("numberReady", 0))
    updated = int(ds.get("updatedNumberScheduled", 0))
    rolled_out = ds.get("observedGeneration", 0) >= 1 and updated >= desired
    ready_agents = [a for a in agents if a.ready and not a.loading]
    backends = sorted({a.backend for a in ready_agents})
    fields = {
        "desiredAgents": desired,
        "readyAgents": len(ready_agents),
        "backend": backends[0] if len(backends) == 1 else ("mixed" if backends else ""),
        "agents": [
            {
                "node": a.node,
                "backend": a.backend if a.backend in ("hyperlight", "wasmtime") else "unknown",
                "address": a.address,
                "ready": a.ready and not a.loading,
                "capacityMiB": a.capacity_mib,
                "load": a.load,
            }
            for a in agents
        ],
    }
    eligible = f"; {eligible_message(desired, nodes_total)}" if nodes_total is not None else ""
    if daemonset_status is None:
        ready = Cond("Ready", False, "DaemonSetPending", "the node-agent DaemonSet has no status yet")
    elif desired == 0:
        ready = Cond("Ready", False, "NoKVMNodes", f"no node matches {KVM_LABEL}=true and the nodeSelector{eligible}")
    elif not ready_agents:
        ready = Cond("Ready", False, "NoAgentsReady", f"0 of {desired} agents report ready{eligible}")
    else:
        ready = Cond(
            "Ready",
            True,
            "AgentsReady",
            f"{len(ready_agents)} of {desired} agents ready ({fields['backend']}){eligible}",
        )
    progressing = (
        Cond("Progressing", True, "RollingOut", f"{updated} of {desired} agent pods updated, {ready_pods} ready")
        if not rolled_out or ready_pods < desired
        else Cond("Progressing", False, "RolledOut", "every agent pod runs the current spec")
    )
    degraded = (
        Cond("Degraded", True, "AgentsLost", "; ".join(lost)) if lost else Cond("Degraded", False, "AsExpected", "")
    )
    health = [pods_condition(tn.metadata.namespace, pods)] if pods is not None else []
    return fields, [ready, progressing, degraded, *health]


@dataclass(frozen=True)
class ModelObservation:
    """What a TarsModel reconcile saw: its node, the agents, and the placement decision."""

    tarsnode_found: bool
    agents: list[AgentView]
    result: PlacementResult | None
    load_errors: dict[str, str]


def tarsmodel_status(tm: TarsModel, seen: ModelObservation) -> tuple[dict[str, Any], list[Cond]]:
    key = model_key(tm)
    base = {"selector": selector(tm), "endpoint": endpoint_url(tm)}
    if not seen.tarsnode_found:
        message = f"TarsNode {tm.spec.node_ref.name!r} not found in namespace {tm.metadata.namespace}"
        return (
            {**base, "replicas": 0, "readyReplicas": 0, "unplacedReplicas": tm.spec.replicas, "placements": []},
            [
                Cond("Ready", False, "NodeNotFound", message),
                Cond("Progressing", False, "NodeNotFound", message),
                Cond("Degraded", True, "NodeNotFound", message),
            ],
        )
    assert seen.result is not None
    loaded_on = {a.node for a in seen.agents if a.ready and key in a.loaded}
    placements = [
        {"node": node, "replicas": count, "ready": node in loaded_on}
        for node, count in sorted(seen.result.placements.items())
    ]
    ready_replicas = sum(count for node, count in seen.result.placements.items() if node in loaded_on)
    fields = {
        **base,
        "replicas": seen.result.placed,
        "readyReplicas": ready_replicas,
        "unplacedReplicas": seen.result.unplaced,
        "placements": placements,
    }
    wanted = tm.spec.replicas
    if wanted == 0:
        ready = Cond("Ready", True, "ScaledToZero", "no replicas; the next request wakes the model")
    elif ready_replicas:
        ready = Cond("Ready", True, "Serving", f"{ready_replicas} of {wanted} replicas loaded")
    else:
        ready = Cond(
            "Ready",
            False,
            "Loading" if placements else "NoAgents",
            "waiting for agents to load the model" if placements else "no ready agent can take the model",
        )
    progressing = (
        Cond("Progressing", True, "Loading", f"{ready_replicas} of {seen.result.placed} placed replicas loaded")
        if ready_replicas < seen.result.placed
        else Cond("Progressing", False, "Placed", f"{seen.result.placed} replicas placed and loaded")
    )
    problems = []
    if seen.result.unplaced:
        ready_agents = sum(a.ready for a in seen.agents)
        problems.append(
            f"{seen.result.unplaced} replica(s) unplaced: {ready_agents} ready agent(s) lack "
            f"{tm.spec.memory_mi_b} MiB free"
        )
    problems += [f"agent on {node}: {error}" for node, error in sorted(seen.load_errors.items())]
    degraded = (
        Cond("Degraded", True, "Unplaceable" if seen.result.unplaced else "LoadFailed", "; ".join(problems))
        if problems
        else Cond("Degraded", False, "AsExpected", "")
    )
    return fields, [ready, progressing, degraded]


def memory_used_by_others(models: list[TarsModel], exclude_key: str) -> dict[str, int]:
    """Memory promised on each node to every other model of the same TarsNode."""
    used: Counter[str] = Counter()
    for other in models:
        if model_key(other) == exclude_key or other.status is None:
            continue
        for placement in other.status.placements:
            used[placement.node] += placement.replicas * other.spec.memory_mi_b
    return dict(used)


def invalid_function_status(tm: TarsModel, problem: str) -> tuple[dict[str, Any], list[Cond]]:
    """Status of a function that failed validation: placed nowhere, Degraded with InvalidFunction."""
    message = problem[:1000]
    fields = {
        "selector": selector(tm),
        "endpoint": endpoint_url(tm),
        "replicas": 0,
        "readyReplicas": 0,
        "unplacedReplicas": tm.spec.replicas,
        "placements": [],
    }
    return fields, [
        Cond("Ready", False, "InvalidFunction", message),
        Cond("Progressing", False, "InvalidFunction", "not placed until the function is fixed"),
        Cond("Degraded", True, "InvalidFunction", message),
    ]


def failure_conditions(error: Exception) -> list[Cond]:
    """Conditions of an object whose reconcile failed: the error is shown on that object only."""
    if isinstance(error, ValidationError):
        reason = "InvalidSpec"
        message = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'object'}: {e['msg']}" for e in error.errors())
    elif isinstance(error, ApiException):
        reason, message = "ApplyFailed", f"the API server refused a change: {_api_message(error)}"
    else:
        reason, message = "ReconcileFailed", f"{type(error).__name__}: {error}"
    return [Cond("Ready", False, reason, message[:1000]), Cond("Degraded", True, reason, message[:1000])]


def _api_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return f"{error.status} {error.reason}"
