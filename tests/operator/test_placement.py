"""Placement decisions, as plain data in and out."""

from __future__ import annotations

from tars_operator.placement import AgentView, place


def agent(node: str, capacity: int = 1024, zone: str = "", ready: bool = True, load: float = 0.0) -> AgentView:
    return AgentView(node=node, ready=ready, capacity_mib=capacity, zone=zone, load=load)


def test_spreads_over_nodes_first() -> None:
    result = place(3, 100, {}, [agent("a"), agent("b"), agent("c")], {})
    assert result.placements == {"a": 1, "b": 1, "c": 1}
    assert result.unplaced == 0


def test_spreads_over_zones_before_nodes() -> None:
    agents = [agent("a1", zone="z1"), agent("a2", zone="z1"), agent("b1", zone="z2", capacity=512)]
    result = place(2, 100, {}, agents, {})
    assert set(result.placements) in ({"a1", "b1"}, {"a2", "b1"})


def test_prefers_the_agent_with_most_free_memory() -> None:
    result = place(1, 100, {}, [agent("a"), agent("b")], {"a": 600})
    assert result.placements == {"b": 1}


def test_capacity_exhausted_reports_unplaced() -> None:
    result = place(4, 400, {}, [agent("a", capacity=1000), agent("b", capacity=500)], {"b": 200})
    # a fits two (800 of 1000), b none (200 used, 300 free < 400).
    assert result.placements == {"a": 2}
    assert result.unplaced == 2


def test_stacks_replicas_when_there_are_more_replicas_than_agents() -> None:
    result = place(4, 100, {}, [agent("a"), agent("b")], {})
    assert result.placements == {"a": 2, "b": 2}


def test_stable_when_nothing_changes() -> None:
    agents = [agent("a"), agent("b"), agent("c"), agent("d")]
    first = place(2, 100, {}, agents, {})
    # A newly emptier agent does not attract an existing replica: moving costs a cold load.
    again = place(2, 100, first.placements, agents, {next(iter(first.placements)): 500})
    assert again.placements == first.placements
    assert again.moved_from == ()


def test_lost_agent_moves_its_replicas_only() -> None:
    agents = [agent("a"), agent("b", ready=False), agent("c")]
    result = place(2, 100, {"a": 1, "b": 1}, agents, {})
    assert result.placements == {"a": 1, "c": 1}
    assert result.moved_from == ("b",)


def test_scaling_down_drops_from_the_crowded_zone() -> None:
    agents = [agent("a1", zone="z1"), agent("a2", zone="z1"), agent("b1", zone="z2")]
    result = place(2, 100, {"a1": 1, "a2": 1, "b1": 1}, agents, {})
    assert result.placements["b1"] == 1
    assert sum(result.placements.values()) == 2


def test_zero_replicas_places_nothing() -> None:
    result = place(0, 100, {"a": 1}, [agent("a")], {})
    assert result.placements == {}
    assert result.unplaced == 0


def test_kept_replicas_shrink_when_others_took_the_memory() -> None:
    result = place(2, 400, {"a": 2}, [agent("a", capacity=1000), agent("b", capacity=1000)], {"a": 500})
    assert result.placements == {"a": 1, "b": 1}


def test_prefers_the_agent_that_already_loaded_the_model() -> None:
    result = place(1, 100, {}, [agent("a"), agent("b"), agent("c")], {"b": 300}, warm=frozenset({"b"}))
    assert result.placements == {"b": 1}


def test_stacked_replicas_spread_when_agents_arrive() -> None:
    alone = place(2, 100, {}, [agent("a")], {})
    assert alone.placements == {"a": 2}
    spread = place(2, 100, alone.placements, [agent("a"), agent("b"), agent("c")], {})
    assert spread.placements["a"] == 1 and sum(spread.placements.values()) == 2 and len(spread.placements) == 2


def test_an_awaited_agent_keeps_its_replicas_but_takes_no_new_ones() -> None:
    awaited = AgentView(node="b", ready=True, capacity_mib=2**31, accepts_new=False)
    result = place(3, 100, {"b": 1}, [agent("a"), awaited], {})
    assert result.placements == {"b": 1, "a": 2}


def test_no_ready_agents() -> None:
    result = place(2, 100, {}, [agent("a", ready=False)], {})
    assert result.placements == {}
    assert result.unplaced == 2
