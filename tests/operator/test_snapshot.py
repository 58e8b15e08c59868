"""What a model's reconcile reads from kopf's indexes: its own TarsNode's share, or everything."""

from __future__ import annotations

from typing import Any

from tars_operator.agents import NodeRecord
from tars_operator.reconciler import Indexes


def model(name: str, node: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ai", "name": name}, "spec": {"nodeRef": {"name": node}}}


INDEXES = Indexes(
    tarsnodes={("ai", "a"): [{"metadata": {"name": "a"}}], ("ai", "b"): [{"metadata": {"name": "b"}}]},
    models={("ai", "a"): [model("m1", "a"), model("m2", "a")], ("ai", "b"): [model("m3", "b")]},
    leases={("ai", "a"): [], ("ai", "b"): []},
    nodes={"n1": [NodeRecord("n1", ready=True, schedulable=True, zone="")]},
    daemonsets={},
)


def test_a_model_reads_only_its_tarsnodes_share() -> None:
    seen = INDEXES.model_snapshot(("ai", "m1"), ("ai", "a"))
    assert set(seen.tarsnodes) == {("ai", "a")} and set(seen.models) == {("ai", "a")}
    assert [m["metadata"]["name"] for m in seen.models[("ai", "a")]] == ["m1", "m2"]
    assert set(seen.nodes) == {"n1"}


def test_a_model_not_under_that_tarsnode_reads_everything() -> None:
    # Its nodeRef changed since the caller read it: the body is found wherever it is now.
    seen = INDEXES.model_snapshot(("ai", "m3"), ("ai", "a"))
    assert set(seen.models) == {("ai", "a"), ("ai", "b")}
