"""A Lease that looks expired in the operator's index is read again before its agent counts as lost."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from tars_api.lease import AgentReport, lease_body
from tars_operator.agents import lease_record
from tars_operator.liveness import LeaseConfirmations, suspect

NOW = datetime.now(UTC)
REPORT = AgentReport(address="10.0.0.1:9400", backend="wasmtime", capacity_mib=1024, ready=True)


def body(renewed_s_ago: float) -> dict[str, Any]:
    return lease_body("n1", "ai", "agent-n1", REPORT, NOW - timedelta(seconds=renewed_s_ago), tarsnode="tars")


class ApiServer:
    """What a GET of the Lease answers, and how often it was asked."""

    def __init__(self, lease: dict[str, Any] | None) -> None:
        self.lease, self.gets = lease, 0

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets += 1
        await asyncio.sleep(0.01)
        return self.lease if self.lease and (namespace, name) == ("ai", self.lease["metadata"]["name"]) else None


def record(renewed_s_ago: float) -> Any:
    found = lease_record(body(renewed_s_ago))
    assert found is not None and found.name == "tars-agent-n1"
    return found


def test_only_a_recent_expiry_is_suspect() -> None:
    assert not suspect(record(2.0), NOW)  # fresh
    assert suspect(record(10.0), NOW)  # 2 s past its 8 s: the index may only be late
    assert not suspect(record(600.0), NOW)  # long gone: no GETs forever for a dead agent


def test_a_renewal_the_index_has_not_seen_keeps_the_agent() -> None:
    server = ApiServer(body(1.0))
    confirmations = LeaseConfirmations(server.get)

    async def many_reconciles_at_once() -> list[Any]:
        return await asyncio.gather(*(confirmations.confirm([record(10.0)], NOW) for _ in range(50)))

    results = asyncio.run(many_reconciles_at_once())
    assert server.gets == 1  # one GET, shared
    assert all(leases[0].renew_time == NOW - timedelta(seconds=1.0) for leases in results)
    # Later snapshots from the same late index get the renewal without asking again.
    assert confirmations.latest(record(10.0)).renew_time == NOW - timedelta(seconds=1.0)


def test_a_lease_expired_in_the_api_server_too_stays_expired() -> None:
    for answer in (body(10.0), None):  # not renewed since, or deleted
        server = ApiServer(answer)
        confirmed = asyncio.run(LeaseConfirmations(server.get).confirm([record(10.0)], NOW))
        assert server.gets == 1
        assert suspect(confirmed[0], NOW)
