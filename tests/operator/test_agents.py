"""Agent liveness from Lease records: when the operator must look again."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from tars_api.lease import AgentReport
from tars_operator.agents import LeaseRecord, late_after_s, next_expiry_s

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def lease(node: str, renewed_s_ago: float | None, duration_s: int | None = 8) -> LeaseRecord:
    renewed = None if renewed_s_ago is None else NOW - timedelta(seconds=renewed_s_ago)
    report = AgentReport(address="10.0.0.1:9400", backend="wasmtime", capacity_mib=1024, ready=True)
    return LeaseRecord("ai", "tars", node, renewed, duration_s, report)


def test_wakes_when_the_first_fresh_lease_expires() -> None:
    leases = [lease("n2", 5.0), lease("n3", 10.0, duration_s=30)]  # both late already
    assert next_expiry_s(leases, NOW, longest_s=10.0) == 3.0


def test_wakes_when_a_lease_misses_a_renewal_to_ask_its_agent() -> None:
    leases = [lease("n1", 2.0), lease("n2", 5.0), lease("n3", 3.0, duration_s=30)]
    assert next_expiry_s(leases, NOW, longest_s=10.0) == late_after_s(leases[0]) - 2.0 == 1.5
    # A Lease declaring a longer life is renewed less often, so it is late later.
    assert late_after_s(lease("n4", 0.0, duration_s=3600)) > 900


def test_expired_refused_and_unrenewed_leases_do_not_wake_it_again() -> None:
    refused = replace(lease("gone", 4.0), refused=True)
    leases = [lease("dead", 20.0), lease("never", None), refused, lease("n1", 10.0, duration_s=30)]
    assert next_expiry_s(leases, NOW, longest_s=10.0) == 10.0
    assert next_expiry_s([], NOW, longest_s=10.0) == 10.0


def test_a_lease_at_its_last_moment_wakes_it_at_once() -> None:
    assert next_expiry_s([lease("n1", 8.0)], NOW, longest_s=10.0) == 0.0
