"""The demo plan: what to deploy, how hard to drive it, what to compare against, what a node costs.

A plan is YAML validated by pydantic, so a typo in a field name fails at start-up with the field's
path instead of silently using a default half-way through a ten-minute run. Paths in a plan are
relative to the plan file, so `tarsctl demo --plan` works from any directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from tarsctl.demo import claims

DEFAULT_PLAN = Path(__file__).resolve().parents[3] / "examples" / "demo" / "plan.yaml"


class PlanError(ValueError):
    """The plan file is missing or invalid; the message names the field."""


class _Model(BaseModel):
    # camelCase in YAML like the Kubernetes objects next to it; unknown keys are errors.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Checkpoint(_Model):
    """A synthetic GPT-2 checkpoint written by tarsctl.models.make_synthetic."""

    preset: str = "edge-tiny"
    seed: int = 0


class BenchmarkCase(_Model):
    model: str = Field(min_length=1)
    route: Literal["infer", "invoke"] = "invoke"
    body: dict[str, Any]
    requests: int = Field(ge=1, le=100_000)
    concurrency: int = Field(ge=1, le=256)
    warmup: int = Field(default=2, ge=0, le=100)
    # Requests sent one at a time: the latency a single user meets.
    single_user_requests: int = Field(default=30, ge=1, le=10_000)
    # The original's row this model stands for (claims.MODELS); shown beside ours, used in no calculation.
    claim: str | None = None

    @model_validator(mode="after")
    def _claim_exists(self) -> BenchmarkCase:
        claims.claim(self.claim)
        return self


class SaturationPlan(_Model):
    """Throughput at saturation: concurrency doubles from the case's until req/s stops growing."""

    seconds: float = Field(default=4.0, gt=0, le=600)
    max_concurrency: int = Field(default=32, ge=1, le=256)
    # A step must add at least this share of req/s over the best so far, or the search stops.
    min_gain: float = Field(default=0.1, ge=0)


class SecurityPlan(_Model):
    """Limits the hostile function runs under, and how hard the neighbour test pushes."""

    enabled: bool = True
    neighbour: str = "sentiment"
    neighbour_body: dict[str, Any] = Field(
        default_factory=lambda: {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]}
    )
    neighbour_route: Literal["infer", "invoke"] = "infer"
    neighbour_requests: int = Field(default=60, ge=5, le=10_000)
    # A CPU-bound hostile request may slow a neighbour by at most this factor (p50 during / before).
    max_neighbour_slowdown: float = Field(default=2.0, gt=1.0)
    burner_concurrency: int = Field(default=8, ge=1, le=128)
    burner_ms: int = Field(default=300, ge=10, le=60_000)
    memory_limit_mib: int = Field(default=64, ge=16)
    cpu_time_ms: int = Field(default=1000, ge=10)
    output_bytes: int = Field(default=65536, ge=1024)
    prompt_injection_model: str | None = "tars-reasoning"
    # Guests that sleep in the host, sent at once: more than the agents have workers.
    blocking_requests: int = Field(default=12, ge=1, le=256)
    blocking_sleep_s: float = Field(default=120.0, gt=0)


class CostPlan(_Model):
    """A node's price and size, and what one container per model would need (the baseline)."""

    node_price_per_hour: float = Field(gt=0)
    node_memory_mib: int = Field(gt=0)
    node_vcpus: float = Field(gt=0)
    node_label: str = "node"
    # The baseline: every model replica in its own container with its own language runtime.
    container_cpu_request: float = Field(default=0.5, gt=0)
    container_overhead_mib: float = Field(
        default=0.0,
        ge=0,
        description="memory per container beyond the model and the measured runtime base (pod, sidecars)",
    )


class Scenario(_Model):
    """A deployment target the recommendations are made for."""

    model_kinds: list[str] = Field(min_length=1)
    p95_budget_ms: float = Field(gt=0)
    target_rps: float = Field(gt=0)
    prefer: Literal["smallest", "fastest"] = "fastest"


class Plan(_Model):
    namespace: str = "tars-demo"
    agents: int = Field(default=2, ge=1, le=32)
    node_prefix: str = "tars-demo-node"
    tarsnode: Path
    manifests: list[Path] = Field(min_length=1)
    # Only these TarsModels of the manifests are applied (all when empty).
    models: list[str] = Field(default_factory=list)
    checkpoints: dict[str, Checkpoint] = Field(default_factory=dict)
    # Merged into each named TarsModel's spec before it is applied (replicas, scaling ...).
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    ready_timeout_s: float = Field(default=300, gt=0)
    operator_priority: int = 500
    benchmark: list[BenchmarkCase] = Field(default_factory=list)
    saturation: SaturationPlan = Field(default_factory=SaturationPlan)
    # Measure the one-container-per-model baseline: each model alone in its own agent process.
    baseline: bool = True
    security: SecurityPlan = Field(default_factory=SecurityPlan)
    cost: CostPlan
    scenarios: dict[str, Scenario] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _benchmarked_models_are_deployed(self) -> Plan:
        if self.models:
            missing = [c.model for c in self.benchmark if c.model not in self.models]
            if missing:
                raise ValueError(f"benchmark names models the plan does not deploy: {', '.join(missing)}")
        return self


def parse_plan(data: Any, base: Path) -> Plan:
    """A Plan from parsed YAML; relative paths are resolved against ``base`` (the plan's folder)."""
    if not isinstance(data, dict):
        raise PlanError("a plan must be a YAML mapping")
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PlanError(f"plan field {where}: {first['msg']}") from None
    plan.tarsnode = (base / plan.tarsnode).resolve()
    plan.manifests = [(base / m).resolve() for m in plan.manifests]
    return plan


def load_plan(path: Path) -> Plan:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlanError(f"cannot read plan {path}: {exc.strerror}") from None
    return parse_plan(yaml.safe_load(text), path.resolve().parent)
