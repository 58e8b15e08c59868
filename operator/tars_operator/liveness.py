"""An agent's Lease that looks expired is read again from the API server before its models move.

kopf's index of Leases can trail the API server: a renewal is indexed only when its turn in kopf's
queue comes, and under thousands of model events that took longer than the Lease's 8 s. A healthy
agent then looked lost, its models moved (a cold load each) and the moves woke more work: at 100
models the placements churned between three healthy agents for minutes. One GET, only for a Lease
that looks expired, tells a late index from a lost agent.

An agent that crashed is found sooner than its Lease expires: once its Lease has missed a renewal
(late_after_s), the operator opens a connection to the agent's address. A refusal means nothing
listens there, the process is gone, and, the Lease read again to rule out a late index, the agent is
lost at once (a crash-looping pod or an OOM-killed agent: its models move about 4 s after its last
renewal instead of 8). Anything else, an accepted connection (a stopped or overloaded agent: the
kernel still accepts), a timeout or an unreachable host (a partition, a dead node), proves nothing,
and the Lease decides as before. The chart's NetworkPolicy already lets the operator reach agents.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from tars_api.lease import LEASE_DURATION_S, lease_expired
from tars_operator.agents import LeaseRecord, late_after_s, lease_record

log = logging.getLogger("tars_operator")
# A Lease is read at most this often, however many reconciles ask at once.
CONFIRM_EVERY_S = 1.0
# A Lease expired longer ago than this is lost without asking: a dead agent's Lease stays until
# someone deletes it, and asking about it forever would be a request a second for nothing.
CONFIRM_WINDOW_S = 30.0

PROBE_TIMEOUT_S = 1.0

Fetch = Callable[[str, str], Awaitable[dict[str, Any] | None]]  # (namespace, name) -> the Lease or None
Probe = Callable[[str], Awaitable[bool]]  # an agent's "host:port" -> True when the connection was refused
LeaseId = tuple[str, str]


async def connection_refused(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True only when the agent's host says nothing listens on its port."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return False
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout_s)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError):
        return False
    writer.close()
    return False


def later(a: LeaseRecord, b: LeaseRecord) -> bool:
    """True when ``a`` is a later renewal than ``b``."""
    return a.renew_time is not None and (b.renew_time is None or a.renew_time > b.renew_time)


def suspect(lease: LeaseRecord, now: datetime) -> bool:
    """Looks expired, and recently enough that the index may only be late."""
    if lease.renew_time is None or not lease.name or not lease_expired(lease.renew_time, lease.duration_s, now):
        return False
    expired_at = lease.renew_time + timedelta(seconds=lease.duration_s or LEASE_DURATION_S)
    return (now - expired_at).total_seconds() < CONFIRM_WINDOW_S


def late(lease: LeaseRecord, now: datetime) -> bool:
    """Missed a renewal but not yet expired: worth asking whether the agent still listens."""
    if lease.renew_time is None or lease.refused or not lease.report.address or not lease.name:
        return False
    overdue = (now - lease.renew_time).total_seconds() > late_after_s(lease)
    return overdue and not lease_expired(lease.renew_time, lease.duration_s, now)


class LeaseConfirmations:
    """The latest renewal of each agent Lease, from kopf's index or from a confirming GET, and
    whether a late agent's port refused a connection."""

    def __init__(self, fetch: Fetch, probe: Probe = connection_refused) -> None:
        self._fetch = fetch
        self._probe = probe
        self._read: dict[LeaseId, LeaseRecord] = {}  # what the last GET (or refused probe) found
        self._asks: dict[tuple[str, LeaseId], tuple[float, asyncio.Future[None]]] = {}

    def latest(self, lease: LeaseRecord) -> LeaseRecord:
        read = self._read.get((lease.namespace, lease.name))
        if read is None:
            return lease
        # A refusal stands for the renewal it was found after; any later renewal clears it.
        same_renewal = read.refused and read.renew_time == lease.renew_time
        return read if later(read, lease) or same_renewal else lease

    async def confirm(self, leases: list[LeaseRecord], now: datetime | None = None) -> list[LeaseRecord]:
        """``leases`` (from the index) with every one that looks expired read again, and every late
        one whose agent refuses connections marked ``refused``."""
        now = now or datetime.now(UTC)
        latest = [self.latest(lease) for lease in leases]
        asks = [self._once("get", lease, self._read_lease) for lease in latest if suspect(lease, now)]
        asks += [self._once("probe", lease, self._probe_late) for lease in latest if late(lease, now)]
        if not asks:
            return latest
        await asyncio.gather(*asks)
        return [self.latest(lease) for lease in latest]

    async def _once(self, kind: str, lease: LeaseRecord, ask: Callable[[LeaseRecord], Awaitable[None]]) -> None:
        """``ask(lease)``, shared by every reconcile asking at once and run at most every CONFIRM_EVERY_S."""
        key = (kind, (lease.namespace, lease.name))
        asked = self._asks.get(key)
        if asked is None or time.monotonic() - asked[0] >= CONFIRM_EVERY_S:
            asked = self._asks[key] = (time.monotonic(), asyncio.ensure_future(ask(lease)))
        await asyncio.shield(asked[1])

    async def _read_lease(self, lease: LeaseRecord) -> None:
        lease_id = (lease.namespace, lease.name)
        try:
            body = await self._fetch(*lease_id)
        except Exception as exc:  # unconfirmed: the index's view stands
            log.warning("could not read Lease %s/%s to confirm its expiry: %s", *lease_id, exc)
            return
        record = lease_record(body) if body is not None else None
        if record is not None:
            self._read[lease_id] = record
        else:
            self._read.pop(lease_id, None)

    async def _probe_late(self, lease: LeaseRecord) -> None:
        if not await self._probe(lease.report.address):
            return
        # Refused: read the Lease once, as for an expiry; an agent that restarted has renewed since.
        await self._read_lease(lease)
        current = self.latest(lease)
        if current.renew_time == lease.renew_time:
            log.info("agent on %s missed a renewal and %s refuses connections", lease.node, lease.report.address)
            self._read[(lease.namespace, lease.name)] = replace(current, refused=True)
