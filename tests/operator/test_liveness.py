"""A Lease that looks expired in the operator's index is read again before its agent counts as lost."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

from tars_api.lease import AgentReport, lease_body
from tars_operator.agents import agent_views, lease_record, lost_reason
from tars_operator.liveness import LeaseConfirmations, connection_refused, late, suspect

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


class Port:
    """What connecting to the agent's address finds, and how often it was tried."""

    def __init__(self, refused: bool) -> None:
        self.refused, self.probes = refused, 0

    async def probe(self, address: str) -> bool:
        assert address == REPORT.address
        self.probes += 1
        return self.refused


def confirmed(server: ApiServer, port: Port, renewed_s_ago: float) -> Any:
    confirmations = LeaseConfirmations(server.get, port.probe)
    return asyncio.run(confirmations.confirm([record(renewed_s_ago)], NOW))[0]


def test_only_a_missed_renewal_is_asked_about() -> None:
    assert not late(record(2.5), NOW)  # within a renewal and its jitter
    assert late(record(5.0), NOW)
    assert not late(record(9.0), NOW)  # expired: the GET decides, as before


def test_a_late_agent_whose_port_refuses_is_lost_at_once() -> None:
    server, port = ApiServer(body(5.0)), Port(refused=True)
    lease = confirmed(server, port, 5.0)
    assert lease.refused and port.probes == 1 and server.gets == 1
    assert "refuses connections" in (lost_reason(lease, {}, NOW) or "")
    assert not agent_views([lease], {}, NOW)[0].ready
    # The same agent renewing again (it restarted) is back, without asking.
    confirmations = LeaseConfirmations(server.get, port.probe)
    asyncio.run(confirmations.confirm([record(5.0)], NOW))
    assert confirmations.latest(record(5.0)).refused
    assert not confirmations.latest(record(1.0)).refused


def test_a_late_agent_that_still_listens_or_renewed_meanwhile_keeps_its_models() -> None:
    server, port = ApiServer(body(5.0)), Port(refused=False)
    assert not confirmed(server, port, 5.0).refused and server.gets == 0
    # Refused, but the API server has a renewal the index has not: an agent restarted in place.
    server, port = ApiServer(body(0.5)), Port(refused=True)
    lease = confirmed(server, port, 5.0)
    assert not lease.refused and agent_views([lease], {}, NOW)[0].ready


def test_connection_refused_is_only_a_refusal() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        assert not asyncio.run(connection_refused(address))
    assert asyncio.run(connection_refused(address))  # closed: nothing listens there now
    assert not asyncio.run(connection_refused("not-an-address"))
    assert not asyncio.run(connection_refused("agent.invalid:9400", timeout_s=0.5))  # no such host: unknown
