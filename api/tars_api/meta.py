"""Shared building blocks: the API group, condition type, duration strings and CEL-mirrored rules."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "tars.hyperlight.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# At most six digits a part and 20 characters: every duration stays far inside Go's range (about
# 2.5 million hours), so CEL's duration() can compare it instead of failing on it.
DURATION_PATTERN = r"^([0-9]{1,6}(\.[0-9]{1,9})?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

Duration = Annotated[
    str,
    Field(
        pattern=DURATION_PATTERN,
        max_length=20,
        json_schema_extra={"format": "duration"},
        description="A duration such as 500ms, 30s, 5m or 1h30m.",
    ),
]


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration string ("1m30s" -> 90.0); the same grammar CEL's duration() reads."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"not a duration: {text!r} (expected e.g. 500ms, 30s, 5m)")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A label key (also a resource name): an optional DNS-subdomain prefix and a name of at most 63.
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# One path segment that is neither "." nor "..": what confines a path to the directory it names.
PATH_SEGMENT = r"([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+)"
ABSOLUTE_PATH_PATTERN = rf"^(/{PATH_SEGMENT})+/?$"

LabelKey = Annotated[str, Field(max_length=317, pattern=QUALIFIED_NAME_PATTERN)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
AbsolutePath = Annotated[str, Field(max_length=4096, pattern=ABSOLUTE_PATH_PATTERN)]


def duration_at_most(field: str, limit: str) -> Rule:
    """A Duration field bounded above, so a typo such as 99999999h is refused, not obeyed.

    CEL's duration() fails on values beyond Go's range (about 292 years); a failed rule rejects too.
    """
    attr = re.sub(r"(?<!^)(?=[A-Z])", "_", field).lower()
    return Rule(
        cel=f"duration(self.{field}) <= duration('{limit}')",
        message=f"{field} must be at most {limit}",
        holds=lambda s: parse_duration(getattr(s, attr)) <= parse_duration(limit),
        field_path=f".{field}",
    )


def name_rules(kind: str, max_length: int, pattern: str, shape: str, why: str) -> tuple[Rule, ...]:
    """Rules on an object's own metadata.name (CEL reaches it from the root of the schema).

    Names the API server accepts can still make names it rejects once the operator derives
    Service names and label values from them; these rules refuse such objects at apply time.
    """
    return (
        Rule(
            cel=f"self.metadata.name.size() <= {max_length}",
            message=f"metadata.name of a {kind} must be at most {max_length} characters ({why})",
            holds=lambda o: len(o.metadata.name) <= max_length,
        ),
        Rule(
            cel=f"self.metadata.name.matches(r'{pattern}')",
            message=f"metadata.name of a {kind} must be {shape} ({why})",
            holds=lambda o: not o.metadata.name or re.fullmatch(pattern, o.metadata.name) is not None,
        ),
    )


@dataclass(frozen=True)
class Rule:
    """One validation rule, stated once and enforced twice.

    ``cel`` goes into the CRD as ``x-kubernetes-validations`` so the API server rejects bad objects at
    apply time; ``holds`` enforces the same rule in pydantic so tarsctl and the operator reject them
    too, with the same message.
    """

    cel: str
    message: str
    holds: Callable[[Any], bool]
    field_path: str | None = None

    def schema(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields rejected, rules enforced."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for rule in type(self).rules:
            if not rule.holds(self):
                where = f"{rule.field_path.lstrip('.')}: " if rule.field_path else ""
                raise ValueError(f"{where}{rule.message}")
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema: dict[str, Any] = handler(core_schema)
        if cls.rules:
            target = handler.resolve_ref_schema(schema)
            target["x-kubernetes-validations"] = [rule.schema() for rule in cls.rules]
        return schema

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def defaulted(model: type[BaseModel], description: str) -> Any:
    """A nested object that is always present, with every default inside it spelled out.

    The API server checks a schema default against the CEL rules without defaulting inside it, so
    an empty ``{}`` would fail rules that read its fields: the default is the fully defaulted object.
    """
    full_default = model().model_dump(by_alias=True, exclude_none=True, mode="json")
    return Field(default_factory=model, description=description, json_schema_extra={"default": full_default})


class Condition(ApiModel):
    """A Kubernetes API convention condition (the same shape as metav1.Condition)."""

    type: str = Field(description="Condition type: Ready, Progressing or Degraded.", max_length=316)
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="",
        description="A CamelCase word saying why the condition has this status.",
        max_length=1024,
    )
    message: str = Field(default="", description="A human-readable explanation.", max_length=32768)
    last_transition_time: datetime | None = Field(default=None, description="When the status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was computed for."
    )


class ObjectMeta(BaseModel):
    """The parts of metadata the project reads; everything else passes through untouched."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str = ""
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
