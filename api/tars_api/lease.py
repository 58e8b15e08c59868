"""The agent's heartbeat: a coordination.k8s.io/v1 Lease per agent, and what its annotations mean.

The agent writes these and the operator reads them; this module in the shared API package is the
contract between the two.

Lease ``tars-agent-<node>`` in the agent's namespace, labels ``app.kubernetes.io/name=tars-agent``,
``tars.hyperlight.dev/node=<node>`` and (when the agent knows it) ``tars.hyperlight.dev/tarsnode=<name>``.
``spec.holderIdentity`` is the agent pod's name, ``spec.leaseDurationSeconds`` is
:data:`LEASE_DURATION_S`, ``spec.renewTime`` is refreshed every :data:`RENEW_INTERVAL_S`. An agent whose
``renewTime + leaseDurationSeconds`` lies in the past is gone; an agent shutting down deletes its Lease.

Annotations (all values are strings):

========================================  ==============================================================
``tars.hyperlight.dev/address``           ``host:port`` of the data plane (``POD_IP:port``)
``tars.hyperlight.dev/backend``           ``hyperlight`` or ``wasmtime``
``tars.hyperlight.dev/backend-reason``    why the probe chose it (free text)
``tars.hyperlight.dev/capacity-mib``      memory offered to models, decimal integer
``tars.hyperlight.dev/ready``             ``true`` or ``false`` (false while loading or draining)
``tars.hyperlight.dev/draining``          ``true`` once the agent shuts down: its models must move
``tars.hyperlight.dev/load``              requests in flight on the agent, decimal number
``tars.hyperlight.dev/operator-requests`` JSON list of the latest requests guests made through the
                                          ``operator.request`` capability (``{"id", "action", "namespace",
                                          "from", "model", "replicas", "reason", "at"}``)
``tars.hyperlight.dev/models``            JSON object, one entry per model placed on the agent:
                                          ``{"<namespace>/<name>": {"loaded": bool, "inFlight": number,
                                          "memoryMiB": int, "rps": number, "tokens": number (asked for by
                                          queued and in-flight requests), "error": "..." (only when
                                          loading failed)}}``; inFlight and tokens average the last second
========================================  ==============================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tars_api.labels import AGENT_APP, NAME, NODE_LABEL, PREFIX, TARSNODE_LABEL

__all__ = [
    "ANNOTATION_ADDRESS",
    "ANNOTATION_BACKEND",
    "ANNOTATION_BACKEND_REASON",
    "ANNOTATION_CAPACITY_MIB",
    "ANNOTATION_LOAD",
    "ANNOTATION_MODELS",
    "ANNOTATION_READY",
    "LEASE_DURATION_S",
    "RENEW_INTERVAL_S",
    "AgentReport",
    "ModelState",
    "agent_annotations",
    "lease_body",
    "lease_expired",
    "lease_name",
    "micro_time",
    "parse_agent_annotations",
]

ANNOTATION_ADDRESS = PREFIX + "address"
ANNOTATION_BACKEND = PREFIX + "backend"
ANNOTATION_BACKEND_REASON = PREFIX + "backend-reason"
ANNOTATION_CAPACITY_MIB = PREFIX + "capacity-mib"
ANNOTATION_READY = PREFIX + "ready"
ANNOTATION_LOAD = PREFIX + "load"
ANNOTATION_MODELS = PREFIX + "models"
ANNOTATION_REQUESTS = PREFIX + "operator-requests"
ANNOTATION_DRAINING = PREFIX + "draining"
# Requests guests made through operator.request, newest last; the operator acts on each once.
MAX_PUBLISHED_REQUESTS = 20

# An agent that stops renewing is declared lost after this; the operator then re-places its models.
# Renewing every 2 s tolerates three missed renewals; detection plus re-placement fits in 10 s.
LEASE_DURATION_S = 8
RENEW_INTERVAL_S = 2


def lease_name(node: str, tarsnode: str | None = None) -> str:
    """One Lease per agent: per TarsNode and node, since two TarsNodes may share a namespace."""
    return f"{tarsnode}-agent-{node}" if tarsnode else f"tars-agent-{node}"


@dataclass(frozen=True)
class ModelState:
    loaded: bool
    in_flight: float = 0.0
    memory_mib: int = 0
    error: str | None = None
    rps: float = 0.0
    tokens: float = 0.0

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "loaded": self.loaded,
            "inFlight": self.in_flight,
            "memoryMiB": self.memory_mib,
            "rps": self.rps,
            "tokens": self.tokens,
        }
        if self.error:
            out["error"] = self.error[:500]
        return out


@dataclass(frozen=True)
class AgentReport:
    """What an agent tells the operator through its Lease annotations."""

    address: str
    backend: str
    capacity_mib: int
    ready: bool
    backend_reason: str = ""
    models: dict[str, ModelState] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Shutting down (SIGTERM): its models must move. Not ready but not draining means still loading.
    draining: bool = False

    @property
    def load(self) -> float:
        return sum(m.in_flight for m in self.models.values())


def agent_annotations(report: AgentReport) -> dict[str, str]:
    return {
        ANNOTATION_ADDRESS: report.address,
        ANNOTATION_BACKEND: report.backend,
        ANNOTATION_BACKEND_REASON: report.backend_reason[:300],
        ANNOTATION_CAPACITY_MIB: str(report.capacity_mib),
        ANNOTATION_READY: "true" if report.ready else "false",
        ANNOTATION_LOAD: f"{report.load:g}",
        ANNOTATION_MODELS: json.dumps({k: v.wire() for k, v in sorted(report.models.items())}, sort_keys=True),
        ANNOTATION_REQUESTS: json.dumps(report.requests[-MAX_PUBLISHED_REQUESTS:], sort_keys=True),
        ANNOTATION_DRAINING: "true" if report.draining else "false",
    }


def parse_agent_annotations(annotations: dict[str, str]) -> AgentReport:
    """The inverse of :func:`agent_annotations`, tolerant of missing or malformed values."""
    try:
        raw_models = json.loads(annotations.get(ANNOTATION_MODELS, "{}"))
    except json.JSONDecodeError:
        raw_models = {}
    models = {
        key: ModelState(
            loaded=bool(v.get("loaded")),
            in_flight=float(v.get("inFlight", 0.0)),
            memory_mib=int(v.get("memoryMiB", 0)),
            error=v.get("error"),
            rps=float(v.get("rps", 0.0)),
            tokens=float(v.get("tokens", 0.0)),
        )
        for key, v in (raw_models.items() if isinstance(raw_models, dict) else [])
        if isinstance(v, dict)
    }
    try:
        capacity = int(annotations.get(ANNOTATION_CAPACITY_MIB, "0"))
    except ValueError:
        capacity = 0
    try:
        requests = json.loads(annotations.get(ANNOTATION_REQUESTS, "[]"))
    except json.JSONDecodeError:
        requests = []
    return AgentReport(
        address=annotations.get(ANNOTATION_ADDRESS, ""),
        backend=annotations.get(ANNOTATION_BACKEND, "unknown"),
        capacity_mib=capacity,
        ready=annotations.get(ANNOTATION_READY) == "true",
        backend_reason=annotations.get(ANNOTATION_BACKEND_REASON, ""),
        models=models,
        requests=[r for r in requests if isinstance(r, dict)] if isinstance(requests, list) else [],
        draining=annotations.get(ANNOTATION_DRAINING) == "true",
    )


def micro_time(moment: datetime) -> str:
    """Kubernetes MicroTime text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    node: str,
    namespace: str,
    holder: str,
    report: AgentReport,
    now: datetime,
    tarsnode: str | None = None,
    acquire_time: datetime | None = None,
) -> dict[str, Any]:
    labels = {NAME: AGENT_APP, NODE_LABEL: node}
    if tarsnode:
        labels[TARSNODE_LABEL] = tarsnode
    spec: dict[str, Any] = {
        "holderIdentity": holder,
        "leaseDurationSeconds": LEASE_DURATION_S,
        "renewTime": micro_time(now),
    }
    if acquire_time is not None:
        spec["acquireTime"] = micro_time(acquire_time)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(node, tarsnode),
            "namespace": namespace,
            "labels": labels,
            "annotations": agent_annotations(report),
        },
        "spec": spec,
    }


def lease_expired(renew_time: datetime | None, duration_s: int | None, now: datetime) -> bool:
    if renew_time is None:
        return True
    return (now - renew_time).total_seconds() > (duration_s or LEASE_DURATION_S)
