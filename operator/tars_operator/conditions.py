"""Kubernetes-convention conditions: a transition time that moves only when the status does."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Cond:
    type: str
    status: bool
    reason: str
    message: str = ""


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(previous: list[dict[str, Any]], wanted: list[Cond], generation: int) -> list[dict[str, Any]]:
    """The new condition list; lastTransitionTime is kept from ``previous`` when status is unchanged."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for cond in wanted:
        status = "True" if cond.status else "False"
        old = before.get(cond.type)
        changed = old is None or old.get("status") != status
        out.append(
            {
                "type": cond.type,
                "status": status,
                "reason": cond.reason,
                "message": cond.message,
                "lastTransitionTime": now_iso() if changed or old is None else old.get("lastTransitionTime", now_iso()),
                "observedGeneration": generation,
            }
        )
    return out


def transitions(previous: list[dict[str, Any]], current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Conditions whose status changed: what deserves an Event."""
    before = {c.get("type"): c.get("status") for c in previous or []}
    return [c for c in current if before.get(c["type"]) != c["status"]]
