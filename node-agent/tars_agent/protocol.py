"""Open Inference Protocol (KServe v2) data models, and the agent's own error and invoke shapes.

Kept apart from models and sandboxes: routes speak these types; the guest speaks JSON text.

Guest convention for ``/v2/models/{name}/infer``: the guest's ``handle`` receives
``{"inputs": [...], "parameters": {...}, "outputs": [...]}`` (the validated request, without ``id``)
and returns ``{"outputs": [{"name", "datatype", "shape", "data"}, ...], "parameters": {...}?}``;
the agent adds ``model_name``, ``model_version`` and ``id``. ``/v1/functions/{name}:invoke`` hands
the request body to ``handle`` unchanged and returns the guest's JSON unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Strict):
    name: str = Field(min_length=1, max_length=256)
    shape: list[int] = Field(description="Dimensions; -1 is not allowed in a request.")
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: Any = Field(description="Tensor contents, row-major, flat or nested.")


class RequestOutput(_Strict):
    name: str = Field(min_length=1, max_length=256)
    parameters: dict[str, Any] | None = None


class InferRequest(_Strict):
    id: str | None = Field(default=None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: Any


class GuestInferResult(BaseModel):
    """What a guest's ``handle`` must return for /infer."""

    outputs: list[ResponseOutput]
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    # Not in the OIP core; extra keys are allowed by the protocol and tell clients what they reach.
    namespace: str
    kind: str
    source: str | None
    capabilities: list[str]


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]
    backend: str
    backend_reason: str


class ErrorResponse(BaseModel):
    error: str = Field(description="What went wrong.")
    field: str | None = Field(default=None, description="The request field at fault, dotted.")
    reason: str | None = Field(default=None, description="Guest failure kind: timeout, memory, output, error.")


def first_error_field(exc: ValidationError) -> tuple[str, str]:
    """("inputs.0.datatype", "Input should be 'BOOL', ...") for the first problem pydantic found."""
    err = exc.errors(include_url=False)[0]
    return ".".join(str(p) for p in err["loc"]) or "body", err["msg"]


def guest_infer_input(request: InferRequest) -> dict[str, Any]:
    return request.model_dump(exclude={"id"}, exclude_none=True)
