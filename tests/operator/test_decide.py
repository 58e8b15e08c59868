"""decide_model: the pure middle of a TarsModel reconcile, fed plain data."""

from __future__ import annotations

from typing import Any

from tars_api import TarsModel
from tars_operator.decide import ModelFacts, decide_model
from tars_operator.placement import AgentView


def tarsmodel(status: dict[str, Any] | None = None, **spec: Any) -> TarsModel:
    base = {"nodeRef": {"name": "tars"}, "kind": "sentiment", "source": "builtin://sentiment-vader", "memoryMiB": 100}
    return TarsModel.model_validate(
        {
            "metadata": {"name": "m", "namespace": "ai", "uid": "u"},
            "spec": {**base, **spec},
            **({"status": status} if status else {}),
        }
    )


def agent(node: str, capacity: int = 1000, loaded: bool = False) -> AgentView:
    held = frozenset({"ai/m"} if loaded else ())
    return AgentView(node=node, ready=True, capacity_mib=capacity, address=f"10.0.0.{node[-1]}:8080", loaded=held)


def condition(plan: Any, type_: str) -> Any:
    return next(c for c in plan.conditions if c.type == type_)


def test_places_routes_and_reports() -> None:
    plan = decide_model(tarsmodel(replicas=2), ModelFacts(True, [agent("n1", loaded=True), agent("n2")]))
    assert plan.placements == {"n1": 1, "n2": 1}
    assert [c["kind"] for c in plan.children] == ["Service", "EndpointSlice"]
    assert plan.slice_names == {plan.children[1]["metadata"]["name"]}
    assert plan.fields["readyReplicas"] == 1 and plan.unplaced == 0
    assert condition(plan, "Ready").status is True
    assert plan.events == []


def test_memory_promised_to_others_leaves_replicas_unplaced() -> None:
    facts = ModelFacts(True, [agent("n1", capacity=150)], used_by_others={"n1": 100})
    plan = decide_model(tarsmodel(), facts)
    assert plan.placements == {} and plan.unplaced == 1
    degraded = condition(plan, "Degraded")
    assert degraded.status is True and degraded.reason == "Unplaceable"


def test_a_missing_tarsnode_decides_no_placement_and_says_why() -> None:
    before = {"placements": [{"node": "n1", "replicas": 1}]}
    plan = decide_model(tarsmodel(status=before), ModelFacts(False, current={"n1": 1}))
    assert plan.placements is None
    assert [c["kind"] for c in plan.children] == ["Service"]
    assert condition(plan, "Ready").reason == "NodeNotFound"
    assert plan.events == [("Normal", "Placed", "placements ['n1'] -> []")]


def test_a_bad_function_is_placed_nowhere() -> None:
    plan = decide_model(tarsmodel(), ModelFacts(True, [agent("n1")], problem="handle() is missing"))
    assert plan.placements == {} and plan.children == [] and plan.slice_names == set()
    degraded = condition(plan, "Degraded")
    assert degraded.reason == "InvalidFunction" and "handle() is missing" in degraded.message


def test_load_errors_are_reported_per_agent() -> None:
    plan = decide_model(tarsmodel(), ModelFacts(True, [agent("n1")], load_errors={"n1": "weights missing"}))
    degraded = condition(plan, "Degraded")
    assert degraded.reason == "LoadFailed" and "agent on n1: weights missing" in degraded.message


def test_ready_only_when_an_agent_holding_it_is_routed() -> None:
    # The reconciler writes a Ready status only after the routing is applied, and any other at once.
    assert decide_model(tarsmodel(), ModelFacts(True, [agent("n1", loaded=True)])).ready is True
    assert decide_model(tarsmodel(), ModelFacts(True, [agent("n1")])).ready is False
    assert decide_model(tarsmodel(), ModelFacts(False)).ready is False
