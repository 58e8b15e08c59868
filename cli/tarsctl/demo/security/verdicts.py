"""What the security check found, and the pure verdicts that judge each attempt from what was
observed, so a protection switched off shows up as "not blocked"."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from tarsctl.demo.stats import ratio


@dataclass
class Attempt:
    name: str
    attack: str  # what a reader looks for: "host file read", "socket", ...
    blocked: bool
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SecurityReport:
    attempts: list[Attempt]
    hostile_model: str
    granted: list[str]
    neighbour: str

    @property
    def score(self) -> float:
        return security_score(self.attempts)

    def to_json(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "blocked": sum(a.blocked for a in self.attempts),
            "attempted": len(self.attempts),
            "hostile_model": self.hostile_model,
            "granted_capabilities": self.granted,
            "neighbour": self.neighbour,
            "attempts": [a.to_json() for a in self.attempts],
        }


# -- verdicts (pure) ---------------------------------------------------------------------------


def security_score(attempts: list[Attempt]) -> float:
    """The share of attempts blocked (0..1)."""
    if not attempts:
        raise ValueError("no attempts were made")
    return sum(a.blocked for a in attempts) / len(attempts)


def guest_failure_reason(body: Any) -> str | None:
    return body.get("reason") if isinstance(body, dict) else None


def file_read_blocked(status: int, body: Any, secret: str) -> bool:
    """Blocked when no attempt read anything and the secret appears nowhere in the answer."""
    text = json.dumps(body)
    if secret in text or "root:x:0:0" in text:
        return False
    attempts = body.get("attempts") if isinstance(body, dict) else None
    if status == 200 and isinstance(attempts, list):
        return all(a.get("blocked") is True for a in attempts)
    return status >= 400  # the guest failed before reading: nothing left the host either


def socket_blocked(status: int, body: Any, connections_seen: int) -> bool:
    if connections_seen > 0:
        return False
    attempts = body.get("attempts") if isinstance(body, dict) else None
    if status == 200 and isinstance(attempts, list):
        return all(a.get("blocked") is True for a in attempts)
    return status >= 400


def memory_blocked(status: int, body: Any, requested_mib: int, agents_alive: bool) -> bool:
    """Blocked when the guest never held the memory it asked for and the agents survived."""
    if not agents_alive:
        return False
    if status == 200 and isinstance(body, dict):
        return int(body.get("allocated_mib", requested_mib)) < requested_mib
    return status >= 500 and guest_failure_reason(body) in {"memory", "error"}


def stopped_with(status: int, body: Any, reason: str, agents_alive: bool) -> bool:
    """Blocked when the agent stopped the guest for ``reason`` and stayed up."""
    return agents_alive and status >= 500 and guest_failure_reason(body) == reason


def input_rejected(status: int, agents_alive: bool) -> bool:
    """Hostile input is blocked when it is refused as the client's fault (4xx) and harms nothing."""
    return agents_alive and 400 <= status < 500


def injection_contained(status: int, used_capabilities: set[str], allowed: set[str], agents_alive: bool) -> bool:
    """A prompt injection is contained when the model reached no host capability outside its allowlist."""
    return agents_alive and status < 500 and used_capabilities <= allowed


def neighbour_unaffected(before_p50: float, during_p50: float, during_errors: int, max_slowdown: float) -> bool:
    return during_errors == 0 and ratio(during_p50, before_p50) <= max_slowdown


def exfiltration_blocked(status: int, body: Any, denied_delta: float, secret_in_logs: bool) -> bool:
    """Blocked when the guest was refused, the refusal was counted, and the secret reached no log."""
    refused = status == 200 and isinstance(body, dict) and body.get("blocked") is True
    return refused and denied_delta >= 1 and not secret_in_logs


def api_refused(refused: bool) -> bool:
    """An object the operator cannot realise is blocked when the API server refuses it outright."""
    return refused


def escape_blocked(api_refused: bool, ready: bool, degraded: bool, content_echoed: bool) -> bool:
    """A file:// source outside the TarsNode's modelRoots is blocked when the API server refuses it,
    or when the agent refuses it (the model turns Degraded, never Ready), and in neither case does
    the file's content come back to the user."""
    if content_echoed:
        return False
    return api_refused or (degraded and not ready)


def build_write_blocked(found_on_host: list[str]) -> bool:
    """Build-time code is contained when nothing it wrote reached the host's import path. What the
    guest says it wrote is evidence only: a jailed build may let it write its own scratch copies."""
    return not found_on_host


def blocking_contained(
    statuses: list[int], held_s: float, sleep_s: float, neighbour_after: list[int], agents_alive: bool
) -> bool:
    """Guests blocked in the host are contained when every one got an answer (stopped at its
    deadline, refused, or woken at once by a host that does not let guests wait) well before it
    would have woken up, and the agents still serve the neighbour promptly afterwards."""
    stopped = all(status != 0 for status in statuses) and held_s < sleep_s
    return stopped and agents_alive and all(status == 200 for status in neighbour_after)


def _short(value: Any, limit: int = 300) -> Any:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
