"""The pure middle of a TarsModel reconcile: what to do, from what was observed.

A model reconcile is observe -> decide -> act. The reconciler observes (indexes, the function check,
what this process placed a moment ago) into :class:`ModelFacts`; :func:`decide_model` turns those
facts, plain data in and plain data out, into a :class:`ModelPlan`; the reconciler acts on the plan
(applies, prunes, writes status, posts Events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tars_api import TarsModel
from tars_operator.conditions import Cond
from tars_operator.placement import AgentView, place
from tars_operator.routing import desired_endpointslices, desired_model_service, model_key
from tars_operator.status import ModelObservation, invalid_function_status, tarsmodel_status


@dataclass(frozen=True)
class ModelFacts:
    """What a TarsModel reconcile observed."""

    tarsnode_found: bool
    agents: list[AgentView] = field(default_factory=list)
    current: dict[str, int] = field(default_factory=dict)  # node -> replicas, as the model's status says
    used_by_others: dict[str, int] = field(default_factory=dict)  # node -> MiB promised to other models
    load_errors: dict[str, str] = field(default_factory=dict)  # node -> the agent's loading error
    problem: str | None = None  # why the model's function cannot run


@dataclass(frozen=True)
class ModelPlan:
    """What a TarsModel reconcile does."""

    # Where the model is now placed; None when nothing was decided (its TarsNode is missing).
    placements: dict[str, int] | None
    children: list[dict[str, Any]]  # the Service and EndpointSlices to apply; every other slice goes
    fields: dict[str, Any]
    conditions: list[Cond]
    unplaced: int = 0
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)

    @property
    def ready(self) -> bool:
        return any(c.type == "Ready" and c.status for c in self.conditions)

    @property
    def slice_names(self) -> set[str]:
        return {c["metadata"]["name"] for c in self.children if c["kind"] == "EndpointSlice"}


def decide_model(tm: TarsModel, facts: ModelFacts) -> ModelPlan:
    if facts.problem is not None:  # a bad function is placed nowhere, so no agent loads it
        fields, conditions = invalid_function_status(tm, facts.problem)
        return ModelPlan({}, [], fields, conditions)
    if not facts.tarsnode_found:
        fields, conditions = tarsmodel_status(tm, ModelObservation(False, [], None, {}))
        return ModelPlan(None, [desired_model_service(tm)], fields, conditions, events=_moved(facts.current, {}))
    warm = frozenset(a.node for a in facts.agents if model_key(tm) in a.loaded)
    result = place(tm.spec.replicas, tm.spec.memory_mi_b, facts.current, facts.agents, facts.used_by_others, warm)
    fields, conditions = tarsmodel_status(tm, ModelObservation(True, facts.agents, result, facts.load_errors))
    children = [desired_model_service(tm), *desired_endpointslices(tm, result.placements, facts.agents)]
    events = _moved(facts.current, result.placements)
    return ModelPlan(result.placements, children, fields, conditions, result.unplaced, events)


def _moved(before: dict[str, int], after: dict[str, int]) -> list[tuple[str, str, str]]:
    if before and set(after) != set(before):
        return [("Normal", "Placed", f"placements {sorted(before)} -> {sorted(after)}")]
    return []
