"""TarsNode: a fleet of node-agents running micro-VM sandboxes on KVM-capable nodes."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from tars_api.meta import (
    API_VERSION,
    DNS_SUBDOMAIN_PATTERN,
    AbsolutePath,
    ApiModel,
    Condition,
    Duration,
    LabelKey,
    LabelValue,
    ObjectMeta,
    Rule,
    defaulted,
    duration_at_most,
    name_rules,
)

# A resource.Quantity that is never negative: 250m, 512Mi, 1.5, 2e3, or a plain integer.
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+))?$"
Quantity = Annotated[
    Annotated[int, Field(ge=0)] | Annotated[str, Field(max_length=64, pattern=QUANTITY_PATTERN)],
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]
# [registry[:port]/]path[:tag][@sha256:digest], as the container runtime parses it.
_IMAGE_PATH = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
IMAGE_PATTERN = (
    rf"^([A-Za-z0-9.-]+(:[0-9]+)?/)?{_IMAGE_PATH}(/{_IMAGE_PATH})*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
# A TarsNode's name becomes the Service NAME-agent (a DNS-1035 label of at most 63) and a label value.
TARSNODE_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class PlatformType(StrEnum):
    AUTO = "Auto"
    HYPERLIGHT = "HyperlightMicroVM"
    WASMTIME = "Wasmtime"


class Capability(StrEnum):
    """What a TarsNode offers: the TARS functions and the seed's edge and serverless scenarios."""

    AUTONOMOUS_REASONING = "autonomous_reasoning"
    SELF_HEALING = "self_healing"
    KNOWLEDGE_PROCESSING = "knowledge_processing"
    AGENT_COORDINATION = "agent_coordination"
    EDGE_INFERENCE = "edge_inference"
    SERVERLESS_FUNCTIONS = "serverless_functions"
    REAL_TIME_INFERENCE = "real_time_inference"
    MULTI_TENANT_ISOLATION = "multi_tenant_isolation"


class Platform(ApiModel):
    """Which sandbox the agents run guests in."""

    type: PlatformType = Field(
        default=PlatformType.AUTO,
        description=(
            "HyperlightMicroVM runs every guest in a Hyperlight micro-VM (needs hardware "
            "virtualisation); Wasmtime runs the same WebAssembly guest under Wasmtime; Auto lets "
            "each agent probe /dev/kvm and pick."
        ),
    )
    hyperlight_version: str = Field(
        default="0.8.0",
        description="The hyperlight-sandbox release the agents use for micro-VMs.",
        max_length=32,
    )
    wasm_runtime: Literal["wasmtime"] = Field(
        default="wasmtime",
        description="The WebAssembly runtime used inside (or instead of) the micro-VM.",
    )


class Toleration(ApiModel):
    """A toleration copied onto the agent pods (same fields as core/v1 Toleration)."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.key) || self.operator == 'Exists'",
            message="a toleration without a key must use operator Exists",
            holds=lambda t: t.key is not None or t.operator == "Exists",
            field_path=".operator",
        ),
        Rule(
            cel="self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="a toleration with operator Exists must not have a value",
            holds=lambda t: t.operator != "Exists" or not t.value,
            field_path=".value",
        ),
    )

    key: LabelKey | None = Field(default=None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: LabelValue | None = Field(default=None, description="Taint value matched with Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(default=None, ge=0, description="How long a NoExecute taint is tolerated.")


def _default_requests() -> dict[str, int | str]:
    return {"cpu": "250m", "memory": "512Mi"}


def _default_limits() -> dict[str, int | str]:
    # No CPU limit: CFS throttling would stall sandboxes that are within their own CPU-time budget.
    return {"memory": "4Gi"}


class ResourceRequirements(ApiModel):
    """Compute resources for the agent container."""

    requests: dict[LabelKey, Quantity] = Field(
        default_factory=_default_requests,
        max_length=16,
        description="Minimum resources, e.g. cpu: 250m, memory: 512Mi.",
    )
    limits: dict[LabelKey, Quantity] = Field(
        default_factory=_default_limits,
        max_length=16,
        description="Maximum resources, e.g. memory: 4Gi.",
    )


class AgentSpec(ApiModel):
    """How the node-agent pods run."""

    # Both listeners bind on the pod's IP: the same port for both would crash-loop every agent pod.
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.grpcPort != self.port",
            message="grpcPort must differ from port (both are served by every agent pod)",
            holds=lambda s: s.grpc_port != s.port,
            field_path=".grpcPort",
        ),
    )

    image: str = Field(
        default="ghcr.io/tars-hyperlight/tars:0.1.0",
        description="The node-agent container image: [registry[:port]/]path[:tag][@sha256:digest].",
        min_length=1,
        max_length=512,
        pattern=IMAGE_PATTERN,
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Image pull policy for the agent container."
    )
    port: int = Field(default=8080, ge=1024, le=65535, description="Port of the agent's HTTP data plane and /metrics.")
    grpc_port: int = Field(
        default=8081,
        ge=1024,
        le=65535,
        description="Port of the agent's Open Inference Protocol gRPC service (GRPCInferenceService).",
    )
    resources: ResourceRequirements = defaulted(ResourceRequirements, "Compute resources for the agent container.")
    model_memory_mi_b: int = Field(
        default=4096,
        ge=64,
        alias="modelMemoryMiB",
        description="Memory each agent offers to models; placement never exceeds it.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Agent log level.")
    tls_secret_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description=(
            "A kubernetes.io/tls Secret (e.g. issued by cert-manager) the agents serve HTTPS with; "
            "absent: plain HTTP inside the cluster."
        ),
    )
    native_http: bool = Field(
        default=False,
        description=(
            "Serve the model routes of native-path models from the agent's Rust front (hyper in "
            "tars_native), Python deciding access; with tlsSecretName it serves HTTPS from the same "
            "certificate. Off: every request goes through Python."
        ),
    )
    default_access: Literal["open", "namespace"] = Field(
        default="namespace",
        description=(
            "Who may call a model without spec.access: namespace (the default: ServiceAccounts of "
            "the model's own namespace) or open (anyone who can reach the agent, an explicit choice)."
        ),
    )


class SandboxLimits(ApiModel):
    """Ceilings enforced on every sandbox the agents start."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.wallTimeoutMs >= self.cpuTimeMs",
            message="wallTimeoutMs must be at least cpuTimeMs",
            holds=lambda s: s.wall_timeout_ms >= s.cpu_time_ms,
            field_path=".wallTimeoutMs",
        ),
    )

    memory_mi_b: int = Field(
        default=256, ge=16, le=16384, alias="memoryMiB", description="Linear memory per sandbox, MiB."
    )
    cpu_time_ms: int = Field(
        default=2000, ge=1, le=600000, description="CPU time per request before the guest is stopped."
    )
    wall_timeout_ms: int = Field(
        default=10000, ge=1, le=3600000, description="Wall-clock time per request, queueing excluded."
    )
    output_bytes: int = Field(default=1048576, ge=1024, le=67108864, description="Largest output a guest may return.")


class SecretKeyRef(ApiModel):
    """A key of a Secret in the TarsNode's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name.")
    key: str = Field(default="dsn", min_length=1, max_length=253, description="Key in the Secret.")


class KnowledgeStore(ApiModel):
    """Where the agents keep tenants' documents (the knowledge.upsert/query capabilities)."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.backend != 'postgres' || has(self.dsnSecretRef)",
            message="the postgres backend needs dsnSecretRef",
            holds=lambda s: s.backend != "postgres" or s.dsn_secret_ref is not None,
            field_path=".dsnSecretRef",
        ),
        duration_at_most("deletionGracePeriod", "8760h"),
    )

    backend: Literal["sqlite", "postgres"] = Field(
        default="sqlite",
        description=(
            "sqlite: a database file per node under stateHostPath (one node, or replicas on one node); "
            "postgres: one database every agent shares (a fleet: every replica sees every write)."
        ),
    )
    dsn_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret key holding the PostgreSQL DSN (postgresql://user:password@host/db). The role must "
            "not be a superuser or have BYPASSRLS: row-level security keeps tenants apart."
        ),
    )
    state_host_path: AbsolutePath = Field(
        default="/var/lib/tars/state",
        description="Directory on each node for the agent's durable state (the sqlite database).",
    )
    deletion_grace_period: Duration = Field(
        default="24h",
        description=(
            "How long a deleted TarsModel's documents are kept (a re-created model of the same name "
            "gets them back); then they are deleted, unless the model set spec.knowledge.retain."
        ),
    )


class TarsNodeSpec(ApiModel):
    """Desired state of a TARS node fleet."""

    platform: Platform = defaulted(Platform, "Which sandbox the agents run guests in.")
    capabilities: list[Capability] = Field(
        default_factory=list,
        description="TARS capabilities this node offers to models.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra node labels agents require; always combined with tars.hyperlight.dev/kvm=true.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Tolerations for the agent pods."
    )
    agent: AgentSpec = defaulted(AgentSpec, "How the node-agent pods run.")
    sandbox: SandboxLimits = defaulted(SandboxLimits, "Limits enforced on every sandbox.")
    warm_pool_size: int = Field(
        default=4, ge=0, le=1024, description="Sandboxes each agent keeps started and ready per model."
    )
    model_roots: list[AbsolutePath] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Directories on the node that file:// model sources may name. None by default, so "
            "file:// sources are refused until a root is listed; the agent checks the resolved path "
            "(symlinks followed) against them."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    knowledge: KnowledgeStore = defaulted(KnowledgeStore, "Where tenants' knowledge documents are kept.")


class AgentStatus(ApiModel):
    """One node-agent as its Lease reports it."""

    node: str = Field(description="The Kubernetes node the agent runs on.")
    backend: Literal["hyperlight", "wasmtime", "unknown"] = Field(
        default="unknown", description="The sandbox backend the agent's probe selected."
    )
    address: str = Field(default="", description="host:port of the agent's data plane.")
    ready: bool = Field(default=False, description="Whether the agent's Lease is current.")
    capacity_mi_b: int = Field(default=0, alias="capacityMiB", description="Memory offered to models.")
    load: float = Field(default=0.0, description="Requests in flight on the agent.")


class TarsNodeStatus(ApiModel):
    """Observed state of a TARS node fleet."""

    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing and Degraded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    desired_agents: int = Field(default=0, description="Agent pods the DaemonSet wants.")
    ready_agents: int = Field(default=0, description="Agent pods that are ready.")
    backend: str = Field(default="", description="Backend of the agents: hyperlight, wasmtime or mixed.")
    agents: list[AgentStatus] = Field(default_factory=list, description="The agents, one per node.")


class TarsNode(ApiModel):
    """A fleet of TARS node-agents that run AI inference and TARS functions in micro-VM sandboxes."""

    model_config = ApiModel.model_config | {"extra": "ignore"}
    rules: ClassVar[tuple[Rule, ...]] = name_rules(
        "TarsNode",
        57,
        TARSNODE_NAME_PATTERN,
        "lowercase letters, digits and '-', starting with a letter and ending with a letter or digit",
        "its agents' Service is NAME-agent and NAME is a label value",
    )
    kind_name: ClassVar[str] = "TarsNode"
    plural: ClassVar[str] = "tarsnodes"
    short_names: ClassVar[list[str]] = ["tn", "tnode"]

    api_version: str = API_VERSION
    kind: Literal["TarsNode"] = "TarsNode"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: TarsNodeSpec = defaulted(TarsNodeSpec, "Desired state of the TARS node.")
    status: TarsNodeStatus | None = None
