"""Cost per model-hour and per million requests, from measured memory and throughput (pure).

TARS packs many models into one agent process per node, so a model costs the memory it adds to
that process. The baseline gives every model replica its own container, which also pays for its
own language runtime and a CPU request; its memory and throughput are measured (baseline.py: the
model alone in its own agent process). Every assumption is returned with the numbers so the report
can print it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from tarsctl.demo.plan import CostPlan

# A model never costs less than this much memory: a measured delta of ~0 MiB (a model sharing
# weights already loaded) would otherwise give an infinite density.
MIN_MODEL_MIB = 1.0


@dataclass(frozen=True)
class ModelCost:
    model: str
    rss_mib: float
    rps: float
    tars_models_per_node: int
    tars_per_model_hour: float
    tars_per_million_requests: float | None
    baseline_rss_mib: float  # measured: the whole single-model process
    baseline_rps: float  # measured: the single-model process at saturation
    baseline_models_per_node: int
    baseline_per_model_hour: float
    baseline_per_million_requests: float | None
    saving_per_model_hour: float  # baseline / tars


@dataclass(frozen=True)
class CostInputs:
    agent_base_rss_mib: float  # measured: an agent with no model loaded
    machine_vcpus: int  # the cores every process of the benchmark shared


def assumptions(plan: CostPlan, inputs: CostInputs) -> list[str]:
    return [
        f"a {plan.node_label} costs {plan.node_price_per_hour:.4f} per hour and offers "
        f"{plan.node_memory_mib} MiB and {plan.node_vcpus:g} vCPUs (from the plan)",
        f"TARS: one agent per node; its measured base RSS ({inputs.agent_base_rss_mib:.0f} MiB) is paid once "
        "per node and each model costs the RSS it added when it loaded (measured)",
        "baseline: one container per model replica; its memory is the measured RSS of an agent process "
        f"holding only that model, plus {plan.container_overhead_mib:g} MiB overhead, and it reserves "
        f"{plan.container_cpu_request:g} vCPU",
        f"throughput per vCPU = measured requests/s at saturation / {inputs.machine_vcpus} cores of the machine "
        "that ran agents, gateway and load generator together (so per-vCPU figures are pessimistic); the "
        "baseline's is its own process's, measured the same way without the gateway",
        "per million requests assumes the node's vCPUs run at that throughput; a baseline container serves "
        "only with the CPU it reserved (a container's reserved CPU cannot serve another model)",
    ]


@dataclass(frozen=True)
class Baseline:
    rss_mib: float  # the whole process holding only this model
    rps: float  # at saturation


def model_cost(
    model: str, rss_mib: float, rps: float, baseline: Baseline, plan: CostPlan, inputs: CostInputs
) -> ModelCost:
    rss = max(rss_mib, MIN_MODEL_MIB)
    usable = plan.node_memory_mib - inputs.agent_base_rss_mib
    if usable <= 0:
        raise ValueError("the node's memory is smaller than one agent")
    tars_density = max(1, math.floor(usable / rss))
    tars_hour = plan.node_price_per_hour * rss / usable
    container = baseline.rss_mib + plan.container_overhead_mib
    baseline_density = max(
        1, min(math.floor(plan.node_memory_mib / container), math.floor(plan.node_vcpus / plan.container_cpu_request))
    )
    baseline_hour = plan.node_price_per_hour / baseline_density
    tars_million = _per_million(plan.node_price_per_hour, rps / inputs.machine_vcpus, plan.node_vcpus)
    # A baseline container serves with the CPU it reserved; the node's other containers' CPU idles
    # for this model, so a node of single-model containers serves at most its reservation's share.
    reserved = min(plan.node_vcpus, baseline_density * plan.container_cpu_request)
    baseline_million = _per_million(plan.node_price_per_hour, baseline.rps / inputs.machine_vcpus, reserved)
    return ModelCost(
        model=model,
        rss_mib=rss_mib,
        rps=rps,
        tars_models_per_node=tars_density,
        tars_per_model_hour=tars_hour,
        tars_per_million_requests=tars_million,
        baseline_rss_mib=baseline.rss_mib,
        baseline_rps=baseline.rps,
        baseline_models_per_node=baseline_density,
        baseline_per_model_hour=baseline_hour,
        baseline_per_million_requests=baseline_million,
        saving_per_model_hour=baseline_hour / tars_hour if tars_hour > 0 else math.inf,
    )


def _per_million(price_per_hour: float, rps_per_vcpu: float, vcpus: float) -> float | None:
    return price_per_hour / (rps_per_vcpu * vcpus * 3600) * 1e6 if rps_per_vcpu > 0 else None


def cost_table(
    measured: dict[str, tuple[float, float, Baseline]], plan: CostPlan, inputs: CostInputs
) -> dict[str, Any]:
    """measured: model -> (RSS MiB per replica, req/s at saturation, its measured baseline)."""
    rows = [asdict(model_cost(name, rss, rps, base, plan, inputs)) for name, (rss, rps, base) in measured.items()]
    return {"rows": rows, "assumptions": assumptions(plan, inputs), "inputs": asdict(inputs), "plan": plan.model_dump()}
