"""Agents as the operator sees them: Lease heartbeats joined with their Nodes' health."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tars_api.labels import BACKEND_LABEL, NODE_LABEL, TARSNODE_LABEL
from tars_api.lease import LEASE_DURATION_S, RENEW_INTERVAL_S, AgentReport, lease_expired, parse_agent_annotations
from tars_operator.placement import AgentView

ZONE_LABEL = "topology.kubernetes.io/zone"
# How much later than its renewal interval a Lease counts as late: a loaded node's jitter.
LATE_GRACE_S = 1.5


@dataclass(frozen=True)
class LeaseRecord:
    """The parts of an agent Lease the operator keeps in its index, its report parsed once here."""

    namespace: str
    tarsnode: str
    node: str
    renew_time: datetime | None
    duration_s: int | None
    report: AgentReport
    name: str = ""
    # The agent missed a renewal and its address refused a connection: its process is gone, so it
    # is lost without waiting out the rest of the Lease. Holds only until a later renewal.
    refused: bool = False


def late_after_s(lease: LeaseRecord) -> float:
    """A Lease not renewed for this long has missed a renewal: the operator then asks the agent's
    port whether anything still listens (liveness.py). Agents renew every quarter of the duration
    their Lease declares (2 s of 8)."""
    duration = lease.duration_s or LEASE_DURATION_S
    return duration * RENEW_INTERVAL_S / LEASE_DURATION_S + LATE_GRACE_S


def lease_lost(lease: LeaseRecord, now: datetime) -> bool:
    return lease.refused or lease_expired(lease.renew_time, lease.duration_s, now)


@dataclass(frozen=True)
class NodeRecord:
    name: str
    ready: bool
    schedulable: bool
    zone: str
    backend_label: str = ""


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def lease_record(body: Any) -> LeaseRecord | None:
    labels = body.get("metadata", {}).get("labels", {}) or {}
    spec = body.get("spec", {}) or {}
    if not labels.get(TARSNODE_LABEL) or not labels.get(NODE_LABEL):
        return None
    return LeaseRecord(
        namespace=body["metadata"]["namespace"],
        tarsnode=labels[TARSNODE_LABEL],
        node=labels[NODE_LABEL],
        renew_time=_parse_time(spec.get("renewTime")),
        duration_s=spec.get("leaseDurationSeconds"),
        report=parse_agent_annotations(dict(body.get("metadata", {}).get("annotations", {}) or {})),
        name=body["metadata"].get("name", ""),
    )


def node_record(body: Any) -> NodeRecord:
    conditions = {c.get("type"): c.get("status") for c in body.get("status", {}).get("conditions", []) or []}
    return NodeRecord(
        name=body["metadata"]["name"],
        ready=conditions.get("Ready") == "True",
        schedulable=not body.get("spec", {}).get("unschedulable", False),
        zone=(body["metadata"].get("labels") or {}).get(ZONE_LABEL, ""),
        backend_label=(body["metadata"].get("labels") or {}).get(BACKEND_LABEL, ""),
    )


def node_label_patches(agents: list[AgentView], nodes: dict[str, NodeRecord]) -> dict[str, dict[str, Any]]:
    """Label patches that make each agent's Node show the backend its probe chose.

    The operator labels Nodes, not the agents: a namespaced Role cannot grant Node access, and
    keeping agents free of cluster-wide permissions is worth the one hop through the Lease."""
    return {
        agent.node: {"metadata": {"labels": {BACKEND_LABEL: agent.backend}}}
        for agent in agents
        if agent.backend in ("hyperlight", "wasmtime")
        and agent.node in nodes
        and nodes[agent.node].backend_label != agent.backend
    }


def agent_views(
    leases: list[LeaseRecord], nodes: dict[str, NodeRecord], now: datetime | None = None
) -> list[AgentView]:
    """One view per agent. An agent can hold models if its Lease is fresh, it is not draining, and its
    Node is Ready and not cordoned (a cordon is how a drain announces itself). An agent still loading
    its models (not ready, not draining) keeps them: moving them would only restart the loading
    elsewhere, and after a restart of everything every agent is loading at once. Traffic goes only
    where a model is loaded (EndpointSlice readiness), so nothing waits on a loading agent."""
    now = now or datetime.now(UTC)
    views = []
    for lease in sorted(leases, key=lambda item: item.node):
        report = lease.report
        node = nodes.get(lease.node)
        alive = not lease_lost(lease, now)
        healthy_node = node is None or (node.ready and node.schedulable)
        views.append(
            AgentView(
                node=lease.node,
                ready=alive and not report.draining and healthy_node,
                loading=not report.ready,
                capacity_mib=report.capacity_mib,
                zone=node.zone if node else "",
                address=report.address,
                backend=report.backend,
                load=report.load,
                loaded=frozenset(key for key, state in report.models.items() if state.loaded),
            )
        )
    return views


def lost_reason(lease: LeaseRecord, nodes: dict[str, NodeRecord], now: datetime) -> str | None:
    """Why an agent is out of service, in words for a condition or Event; None if it is fine."""
    node = nodes.get(lease.node)
    if lease.refused:
        return f"agent on {lease.node} missed a Lease renewal and its port refuses connections"
    if lease_expired(lease.renew_time, lease.duration_s, now):
        return f"agent on {lease.node} stopped renewing its Lease"
    if node is not None and not node.ready:
        return f"node {lease.node} is NotReady"
    if node is not None and not node.schedulable:
        return f"node {lease.node} is cordoned"
    if lease.report.draining:
        return f"agent on {lease.node} is draining"
    return None


def next_expiry_s(leases: list[LeaseRecord], now: datetime, longest_s: float) -> float:
    """Seconds until the first of these Leases still renewed on time turns late (late_after_s) or
    expires, at most ``longest_s`` (a renewal meanwhile moves that moment later; a new Lease arrives as
    a watch event)."""
    waits = []
    for lease in leases:
        if lease.renew_time is None or lease_lost(lease, now):
            continue
        late_at = lease.renew_time + timedelta(seconds=late_after_s(lease))
        expires_at = lease.renew_time + timedelta(seconds=lease.duration_s or LEASE_DURATION_S)
        waits.append(((late_at if late_at > now else expires_at) - now).total_seconds())
    return max(0.0, min([longest_s, *waits]))
