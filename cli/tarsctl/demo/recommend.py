"""Deployment recommendations derived from measured numbers and the cluster's nodes by stated rules (pure).

For each scenario in the plan (edge, chat, analytics, search, decision making): the candidates are
the measured models of the scenario's kinds; those whose p95 under the plan's concurrency fits the
budget qualify; the plan's preference picks one (smallest memory, or lowest p95). A node serves what
its vCPUs give at the throughput measured per vCPU at saturation; the nodes needed are the target
rate over that, and one replica per node uses all of a node's CPU (a second replica on the same node
adds no CPU), so replicas equal nodes. A model whose replica does not fit the memory a node's agent
gives models is not recommended there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from tarsctl.demo.plan import Scenario


@dataclass(frozen=True)
class Measured:
    model: str
    kind: str
    p95_ms: float  # at the plan's concurrency, through the gateway
    single_user_p95_ms: float
    saturated_rps: float  # all replicas together, at saturation
    measured_vcpus: float  # the cores the measurement ran on (agents, gateway and load generator)
    rss_mib: float  # per replica

    @property
    def rps_per_vcpu(self) -> float:
        return self.saturated_rps / self.measured_vcpus if self.measured_vcpus > 0 else 0.0


@dataclass(frozen=True)
class NodeShape:
    """The nodes recommendations are made for: the smallest of the cluster's agents' nodes."""

    example: str  # a node of this shape
    vcpus: float
    memory_mib: float  # allocatable
    model_memory_mib: float  # what the agent gives models there
    count: int  # nodes of the cluster the agents run on

    def describe(self) -> str:
        return (
            f"{self.vcpus:g} vCPU / {self.memory_mib / 1024:.1f} GiB ({self.model_memory_mib:.0f} MiB for models), "
            f"like {self.example}"
        )


def node_shape(nodes: list[dict[str, Any]], model_memory_mib: float | None, agent_base_mib: float) -> NodeShape:
    """From Node objects: the smallest allocatable CPU and memory, so every node can hold the advice.

    The models' share is the allocatable memory less the agent's own, capped by the TarsNode's
    ``agent.modelMemoryMiB`` when it sets one.
    """
    if not nodes:
        raise ValueError("no nodes to recommend for")

    def shape(node: dict[str, Any]) -> tuple[float, float]:
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        return float(parse_quantity(allocatable.get("cpu", "0"))), float(parse_quantity(allocatable.get("memory", "0")))

    smallest = min(nodes, key=shape)
    vcpus, memory = shape(smallest)
    memory_mib = memory / 2**20
    models = memory_mib - agent_base_mib
    if model_memory_mib is not None:
        models = min(models, model_memory_mib)
    return NodeShape(smallest["metadata"]["name"], vcpus, memory_mib, max(0.0, models), len(nodes))


@dataclass(frozen=True)
class Recommendation:
    scenario: str
    model: str | None
    meets_budget: bool
    replicas: int
    nodes: int
    rule: str
    why: str


def _rule(scenario: Scenario, node: NodeShape) -> str:
    pick = "smallest in memory" if scenario.prefer == "smallest" else "lowest p95"
    return (
        f"models of kind {', '.join(scenario.model_kinds)} with p95 <= {scenario.p95_budget_ms:g} ms under load; "
        f"pick the {pick}; nodes = ceil({scenario.target_rps:g} req/s / (req/s per vCPU x {node.vcpus:g} vCPU)); "
        "one replica per node; the replica must fit the node's model memory"
    )


def _choose(scenario: Scenario, candidates: list[Measured]) -> tuple[Measured, bool]:
    fitting = [m for m in candidates if m.p95_ms <= scenario.p95_budget_ms]
    if scenario.prefer == "smallest" and fitting:
        return min(fitting, key=lambda m: (m.rss_mib, m.p95_ms)), True
    return min(fitting or candidates, key=lambda m: m.p95_ms), bool(fitting)


def recommend(scenario_name: str, scenario: Scenario, measured: list[Measured], node: NodeShape) -> Recommendation:
    rule = _rule(scenario, node)
    candidates = [
        m
        for m in measured
        if m.kind in scenario.model_kinds and not math.isnan(m.p95_ms) and m.rss_mib <= node.model_memory_mib
    ]
    if not candidates:
        return Recommendation(
            scenario_name, None, False, 0, 0, rule, "no measured model of these kinds fits these nodes' model memory"
        )
    choice, fits_budget = _choose(scenario, candidates)
    per_node = choice.rps_per_vcpu * node.vcpus
    nodes = math.ceil(scenario.target_rps / per_node) if per_node > 0 else 0
    budget = (
        f"p95 {choice.p95_ms:.1f} ms under load (single user {choice.single_user_p95_ms:.1f} ms) fits the "
        f"{scenario.p95_budget_ms:g} ms budget"
        if fits_budget
        else f"no candidate fits {scenario.p95_budget_ms:g} ms; closest is p95 {choice.p95_ms:.1f} ms"
    )
    have = f"; the cluster has {node.count}" if nodes > node.count else ""
    why = (
        f"{budget}; {choice.rps_per_vcpu:.1f} req/s per vCPU at saturation, so a {node.vcpus:g}-vCPU node serves "
        f"{per_node:.1f} req/s and {scenario.target_rps:g} req/s needs {nodes} node(s), one "
        f"{choice.rss_mib:.0f} MiB replica each (of {node.model_memory_mib:.0f} MiB for models per node){have}"
    )
    return Recommendation(scenario_name, choice.model, fits_budget, nodes, nodes, rule, why)


def recommendations(scenarios: dict[str, Scenario], measured: list[Measured], node: NodeShape) -> list[dict[str, Any]]:
    return [asdict(recommend(name, s, measured, node)) for name, s in scenarios.items()]
