"""An agent's Lease that looks expired is read again from the API server before its models move.

kopf's index of Leases can trail the API server: a renewal is indexed only when its turn in kopf's
queue comes, and under thousands of model events that took longer than the Lease's 8 s. A healthy
agent then looked lost, its models moved (a cold load each) and the moves woke more work: at 100
models the placements churned between three healthy agents for minutes. One GET, only for a Lease
that looks expired, tells a late index from a lost agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tars_api.lease import LEASE_DURATION_S, lease_expired
from tars_operator.agents import LeaseRecord, lease_record

log = logging.getLogger("tars_operator")
# A Lease is read at most this often, however many reconciles ask at once.
CONFIRM_EVERY_S = 1.0
# A Lease expired longer ago than this is lost without asking: a dead agent's Lease stays until
# someone deletes it, and asking about it forever would be a request a second for nothing.
CONFIRM_WINDOW_S = 30.0

Fetch = Callable[[str, str], Awaitable[dict[str, Any] | None]]  # (namespace, name) -> the Lease or None
LeaseId = tuple[str, str]


def later(a: LeaseRecord, b: LeaseRecord) -> bool:
    """True when ``a`` is a later renewal than ``b``."""
    return a.renew_time is not None and (b.renew_time is None or a.renew_time > b.renew_time)


def suspect(lease: LeaseRecord, now: datetime) -> bool:
    """Looks expired, and recently enough that the index may only be late."""
    if lease.renew_time is None or not lease.name or not lease_expired(lease.renew_time, lease.duration_s, now):
        return False
    expired_at = lease.renew_time + timedelta(seconds=lease.duration_s or LEASE_DURATION_S)
    return (now - expired_at).total_seconds() < CONFIRM_WINDOW_S


class LeaseConfirmations:
    """The latest renewal of each agent Lease, from kopf's index or from a confirming GET."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._read: dict[LeaseId, LeaseRecord] = {}  # what the last GET of each Lease found
        self._asks: dict[LeaseId, tuple[float, asyncio.Future[None]]] = {}

    def latest(self, lease: LeaseRecord) -> LeaseRecord:
        read = self._read.get((lease.namespace, lease.name))
        return read if read is not None and later(read, lease) else lease

    async def confirm(self, leases: list[LeaseRecord], now: datetime | None = None) -> list[LeaseRecord]:
        """``leases`` (from the index) with every one that looks expired read again."""
        now = now or datetime.now(UTC)
        latest = [self.latest(lease) for lease in leases]
        suspects = [lease for lease in latest if suspect(lease, now)]
        if not suspects:
            return latest
        await asyncio.gather(*(self._ask((lease.namespace, lease.name)) for lease in suspects))
        return [self.latest(lease) for lease in latest]

    async def _ask(self, lease: LeaseId) -> None:
        asked = self._asks.get(lease)
        if asked is None or time.monotonic() - asked[0] >= CONFIRM_EVERY_S:
            asked = self._asks[lease] = (time.monotonic(), asyncio.ensure_future(self._read_lease(lease)))
        await asyncio.shield(asked[1])

    async def _read_lease(self, lease: LeaseId) -> None:
        try:
            body = await self._fetch(*lease)
        except Exception as exc:  # unconfirmed: the index's view stands
            log.warning("could not read Lease %s/%s to confirm its expiry: %s", *lease, exc)
            return
        record = lease_record(body) if body is not None else None
        if record is not None:
            self._read[lease] = record
        else:
            self._read.pop(lease, None)
