"""What the operator does with requests guests make through the operator.request capability (e.g.
the self-healing function asking for more replicas). The decision is pure; the agent only relays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_AGE_S = 120.0  # an older request (e.g. replayed from a Lease after an operator restart) is stale
MAX_REQUESTED_REPLICAS = 100


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    message: str
    replicas: int | None = None


def decide_request(request: dict[str, Any], agent_namespace: str, target: dict[str, Any] | None) -> Verdict:
    """Accept or refuse one request. Only scaling is acted on; only within the agent's namespace
    (the tenant boundary); never against the autoscaler; never beyond the model's own bounds."""
    who = request.get("from", "a guest")
    action = request.get("action")
    if request.get("namespace") != agent_namespace:
        return Verdict(False, f"{action} requested by {who}: refused, outside namespace {agent_namespace}")
    if action != "scale":
        return Verdict(False, f"{action} requested by {who}: refused, only scale requests are acted on")
    if target is None:
        return Verdict(False, f"scale of {request.get('model')!r} requested by {who}: refused, no such TarsModel")
    scaling = (target.get("spec") or {}).get("scaling") or {}
    if scaling.get("enabled"):
        return Verdict(False, f"scale requested by {who}: refused, the autoscaler owns this model's replicas")
    try:
        wanted = int(request.get("replicas", -1))
    except (TypeError, ValueError):
        wanted = -1
    if not 0 <= wanted <= MAX_REQUESTED_REPLICAS:
        return Verdict(False, f"scale requested by {who}: refused, replicas must be 0..{MAX_REQUESTED_REPLICAS}")
    reason = str(request.get("reason") or "no reason given")[:200]
    return Verdict(True, f"scaled to {wanted} replicas as requested by {who} ({reason})", wanted)
