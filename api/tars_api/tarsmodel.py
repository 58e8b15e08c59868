"""TarsModel: one model or guest function served on a TarsNode."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from tars_api.access import ModelAccess
from tars_api.meta import (
    API_VERSION,
    DNS_LABEL_PATTERN,
    PATH_SEGMENT,
    ApiModel,
    Condition,
    Duration,
    ObjectMeta,
    Rule,
    defaulted,
    duration_at_most,
    name_rules,
    parse_duration,
)

# file:// paths are absolute and never step out with "." or ".." segments; whether they lie under
# one of the TarsNode's spec.modelRoots is the agent's check (CEL cannot read another object).
# A ConfigMap key is never "." or ".." or "..x" (the API server's own rule for keys).
SOURCE_PATTERN = (
    r"^(builtin://[a-z0-9][a-z0-9-]*"
    rf"|file://(/{PATH_SEGMENT})+"
    r"|configmap://[a-z0-9][a-z0-9.-]*/(\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*))$"
)
MAX_FUNCTION_CODE = 262144


class ModelKind(StrEnum):
    SENTIMENT = "sentiment"
    EMBEDDING = "embedding"
    TEXT_GENERATION = "text-generation"
    REASONING = "reasoning"
    FUNCTION = "function"


class HostCapability(StrEnum):
    """Host functions a guest may call through call_tool(); anything not listed is refused."""

    NN_EMBED = "nn.embed"
    NN_GENERATE = "nn.generate"
    NN_SENTIMENT = "nn.sentiment"
    KNOWLEDGE_QUERY = "knowledge.query"
    KNOWLEDGE_UPSERT = "knowledge.upsert"
    FUNCTIONS_INVOKE = "functions.invoke"
    OPERATOR_REQUEST = "operator.request"
    CLOCK_NOW = "clock.now"
    # Waits (parks the worker, never past the request's deadline): latency-bound test loads.
    CLOCK_SLEEP = "clock.sleep"
    LOG_WRITE = "log.write"


class NodeRef(ApiModel):
    """A TarsNode in the same namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the TarsNode.")


class Scaling(ApiModel):
    """Autoscaling, modelled on Knative's KPA: stable and panic windows over observed load."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas",
            holds=lambda s: s.min_replicas <= s.max_replicas,
            field_path=".minReplicas",
        ),
        Rule(
            cel="!self.scaleToZero || self.minReplicas == 0",
            message="scaleToZero requires minReplicas to be 0",
            holds=lambda s: not s.scale_to_zero or s.min_replicas == 0,
            field_path=".scaleToZero",
        ),
        Rule(
            cel="duration(self.panicWindow) < duration(self.stableWindow)",
            message="panicWindow must be shorter than stableWindow",
            holds=lambda s: parse_duration(s.panic_window) < parse_duration(s.stable_window),
            field_path=".panicWindow",
        ),
        duration_at_most("stableWindow", "1h"),
        duration_at_most("scaleToZeroGracePeriod", "24h"),
    )

    enabled: bool = Field(
        default=False,
        description="Let the operator's autoscaler write spec.replicas. Off: kubectl scale or an HPA drive it.",
    )
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas.")
    max_replicas: int = Field(default=10, ge=1, le=1000, description="Most replicas.")
    metric: Literal["concurrency", "rps", "tokens"] = Field(
        default="concurrency",
        description=(
            "Observed load: requests in flight (queued ones included), requests per second, or tokens "
            "(text-generation: tokens that queued and in-flight requests asked to generate)."
        ),
    )
    target: float = Field(
        default=10.0,
        gt=0,
        le=1000000,
        description="Load one replica should carry (in-flight requests, requests per second, or tokens).",
    )
    scale_to_zero: bool = Field(
        default=False, description="Go to zero replicas after scaleToZeroGracePeriod without traffic."
    )
    scale_to_zero_grace_period: Duration = Field(default="30s", description="Idle time before scaling to zero.")
    stable_window: Duration = Field(default="60s", description="Window averaged in stable mode.")
    panic_window: Duration = Field(default="6s", description="Window watched for bursts.")
    panic_threshold: int = Field(
        default=200,
        ge=110,
        le=1000,
        description="Percent of current capacity that, seen over the panic window, starts panic mode.",
    )


class FunctionSpec(ApiModel):
    """Inline guest code for kind function."""

    code: str = Field(
        min_length=1,
        max_length=MAX_FUNCTION_CODE,
        description="Python source that defines handle(input) -> output (both JSON values).",
    )
    language: Literal["python"] = Field(default="python", description="Language of code.")


class ModelLimits(ApiModel):
    """Per-model sandbox limits; each must stay within the TarsNode's ceilings."""

    memory_mi_b: int | None = Field(
        default=None, ge=16, le=16384, alias="memoryMiB", description="Linear memory per sandbox, MiB."
    )
    cpu_time_ms: int | None = Field(default=None, ge=1, le=600000, description="CPU time per request, ms.")
    output_bytes: int | None = Field(
        default=None, ge=1024, le=67108864, description="Largest output per request, bytes."
    )


class ModelKnowledge(ApiModel):
    """The model's knowledge documents (knowledge.upsert), kept by the TarsNode's store."""

    retain: bool = Field(
        default=False,
        description=(
            "Keep the documents when the TarsModel is deleted. Otherwise they are deleted after the "
            "TarsNode's spec.knowledge.deletionGracePeriod."
        ),
    )


class TarsModelSpec(ApiModel):
    """Desired state of a model or guest function."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.source) || has(self.function)",
            message="one of source or function is required",
            holds=lambda s: s.source is not None or s.function is not None,
        ),
        Rule(
            cel="!has(self.function) || self.kind == 'function'",
            message="function is only allowed with kind function",
            holds=lambda s: s.function is None or s.kind == ModelKind.FUNCTION.value,
            field_path=".function",
        ),
        Rule(
            cel="!has(self.source) || !self.source.startsWith('configmap://') || self.kind == 'function'",
            message="configmap:// sources are only allowed with kind function",
            holds=lambda s: (
                s.source is None or not s.source.startswith("configmap://") or s.kind == ModelKind.FUNCTION.value
            ),
            field_path=".source",
        ),
        Rule(
            cel="!self.scaling.enabled || (self.replicas >= self.scaling.minReplicas"
            " && self.replicas <= self.scaling.maxReplicas)",
            message="replicas must lie within scaling.minReplicas..maxReplicas when scaling is enabled",
            holds=lambda s: not s.scaling.enabled or s.scaling.min_replicas <= s.replicas <= s.scaling.max_replicas,
            field_path=".replicas",
        ),
        Rule(
            cel="self.precision == 'float32' || self.kind == 'text-generation'",
            message="precision int8 is only implemented for kind text-generation",
            holds=lambda s: s.precision == "float32" or s.kind == ModelKind.TEXT_GENERATION.value,
            field_path=".precision",
        ),
    )

    node_ref: NodeRef = Field(description="The TarsNode whose agents serve this model.")
    kind: ModelKind = Field(description="What the model does.")
    source: str | None = Field(
        default=None,
        pattern=SOURCE_PATTERN,
        max_length=4096,
        description=(
            "Where the model comes from: builtin://NAME (shipped with the agent), file:///path on "
            "the node under one of the TarsNode's spec.modelRoots, or configmap://NAME/KEY for "
            "functions. Never a hub URL."
        ),
    )
    function: FunctionSpec | None = Field(default=None, description="Inline code for kind function.")
    memory_mi_b: int = Field(
        default=256, ge=1, le=65536, alias="memoryMiB", description="Memory one replica needs on an agent."
    )
    replicas: int = Field(default=1, ge=0, le=1000, description="Agents that hold the model loaded.")
    scaling: Scaling = defaulted(Scaling, "Autoscaling and scale to zero.")
    capabilities: list[HostCapability] = Field(
        default_factory=list,
        description="Host capabilities the guest may call; every other call is refused and audited.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    limits: ModelLimits = defaulted(ModelLimits, "Sandbox limits for this model.")
    max_tokens: int = Field(
        default=256, ge=1, le=4096, description="Largest number of tokens one generation may ask for."
    )
    precision: Literal["float32", "int8"] = Field(
        default="float32",
        description=(
            "Weights of a text-generation model: float32 (matches transformers to 1e-5), or int8 "
            "(opt-in: 7-bit weights per column, a quarter of the bytes per token and about 3x faster; "
            "logits within about 3 % of their largest, so greedy text can differ where two tokens are close)."
        ),
    )
    latency_slo_ms: int | None = Field(
        default=None, ge=1, description="p99 latency objective, alerted on when exceeded."
    )
    knowledge: ModelKnowledge = defaulted(ModelKnowledge, "What happens to the model's knowledge documents.")
    access: ModelAccess | None = Field(
        default=None,
        description=(
            "Who may call the model (ServiceAccounts, namespaces, API-key Secrets). Absent: the "
            "TarsNode's agent.defaultAccess decides, which is namespace (ServiceAccounts of the model's "
            "own namespace) unless the TarsNode explicitly chooses open."
        ),
    )


class Placement(ApiModel):
    """One agent holding the model."""

    node: str = Field(description="Node of the agent.")
    replicas: int = Field(default=1, ge=0, description="Warm replicas on that agent.")
    ready: bool = Field(default=False, description="The agent reports the model loaded.")


class AutoscalerStatus(ApiModel):
    """What the autoscaler saw and decided, last time it ran."""

    observed_load: float = Field(default=0.0, description="Load averaged over the stable window.")
    desired_replicas: int = Field(default=0, description="Replicas the decider asked for.")
    mode: Literal["stable", "panic", "idle", "disabled"] = Field(
        default="disabled", description="stable, panic (only scales up), idle (no traffic) or disabled."
    )


class TarsModelStatus(ApiModel):
    """Observed state of a model."""

    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing and Degraded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    replicas: int = Field(default=0, description="Replicas placed on agents.")
    ready_replicas: int = Field(default=0, description="Replicas agents report loaded.")
    unplaced_replicas: int = Field(default=0, description="Replicas no agent had room for.")
    selector: str = Field(default="", description="Label selector of the model's pods, for the scale subresource.")
    placements: list[Placement] = Field(default_factory=list, description="Which agents hold the model.")
    endpoint: str = Field(default="", description="In-cluster URL of the model's v2 inference route.")
    autoscaler: AutoscalerStatus | None = Field(default=None, description="Last autoscaling decision.")


class TarsModel(ApiModel):
    """A model or TARS guest function served by the agents of a TarsNode."""

    model_config = ApiModel.model_config | {"extra": "ignore"}
    rules: ClassVar[tuple[Rule, ...]] = name_rules(
        "TarsModel",
        52,
        DNS_LABEL_PATTERN,
        "lowercase letters, digits and '-', starting and ending with a letter or digit",
        "its Service is tars-model-NAME and NAME is a label value",
    )
    kind_name: ClassVar[str] = "TarsModel"
    plural: ClassVar[str] = "tarsmodels"
    short_names: ClassVar[list[str]] = ["tm", "tmodel"]

    api_version: str = API_VERSION
    kind: Literal["TarsModel"] = "TarsModel"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: TarsModelSpec
    status: TarsModelStatus | None = None
