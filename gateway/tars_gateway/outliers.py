"""Outlier ejection, as Envoy's ``consecutive_5xx``: an agent that fails several attempts in a row is
left out of the picks for a while, and for longer each time it is ejected again. Pure, no I/O: the
caller passes the clock.

A failure is the agent's fault only: no connection, no first byte in time, a hung agent, 502/503/504.
A guest's own error (500) or a client error says nothing about the agent and resets nothing either.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EjectionPolicy:
    consecutive_failures: int = 3
    base_ejection_s: float = 10.0
    max_ejection_s: float = 300.0


@dataclass
class _Record:
    failures: int = 0  # in a row
    ejections: int = 0  # so far; each lengthens the next ejection
    ejected_until: float = 0.0


@dataclass
class Outliers:
    policy: EjectionPolicy = field(default_factory=EjectionPolicy)
    _records: dict[str, _Record] = field(default_factory=dict)

    def failure(self, address: str, now: float) -> bool:
        """Counts a failed attempt; True when it ejects the agent."""
        record = self._records.setdefault(address, _Record())
        record.failures += 1
        if record.failures < self.policy.consecutive_failures or record.ejected_until > now:
            return False
        record.ejections += 1
        record.failures = 0
        record.ejected_until = now + min(self.policy.max_ejection_s, self.policy.base_ejection_s * record.ejections)
        return True

    def success(self, address: str) -> None:
        """An answer from the agent ends its run of failures (its ejection count stays, as in Envoy,
        so an agent that keeps coming back broken stays out longer each time)."""
        record = self._records.get(address)
        if record is not None:
            record.failures = 0

    def ejected(self, now: float) -> set[str]:
        return {address for address, record in self._records.items() if record.ejected_until > now}
