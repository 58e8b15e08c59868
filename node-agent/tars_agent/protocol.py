"""Open Inference Protocol (KServe v2) data models, and the agent's own error and invoke shapes.

Kept apart from models and sandboxes: routes speak these types; the guest speaks JSON text.

Guest convention for ``/v2/models/{name}/infer``: the guest's ``handle`` receives
``{"inputs": [...], "parameters": {...}, "outputs": [...]}`` (the validated request, without ``id``)
and returns ``{"outputs": [{"name", "datatype", "shape", "data"}, ...], "parameters": {...}?}``;
the agent adds ``model_name``, ``model_version`` and ``id``. ``/v1/functions/{name}:invoke`` hands
the request body to ``handle`` unchanged and returns the guest's JSON unchanged.
"""

from __future__ import annotations

import math
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


# Deeper JSON than this is refused at the edge: a guest's own parser (CPython's, in a guest with a
# small stack) fails far sooner than the agent's, and no tensor or function input needs it.
MAX_JSON_DEPTH = 64

_INT_RANGES = {
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when lists and objects nest deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _flat(data: Any) -> list[Any]:
    """Tensor elements row-major, from flat or nested lists (depth is bounded at the edge)."""
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def _element_fits(datatype: str, element: Any) -> bool:
    if datatype == "BOOL":
        return isinstance(element, bool)
    if datatype == "BYTES":
        return isinstance(element, str)
    if isinstance(element, bool) or not isinstance(element, int | float):
        return False
    if datatype in _INT_RANGES:
        low, high = _INT_RANGES[datatype]
        return isinstance(element, int) and low <= element <= high
    return True  # FP16/FP32/FP64: any finite number (non-finite ones never parse)


def tensor_problem(request: InferRequest) -> tuple[str, str] | None:
    """(field, message) for the first input whose shape, data and datatype disagree, else None."""
    for index, tensor in enumerate(request.inputs):
        where = f"inputs.{index}"
        if any(dim < 0 for dim in tensor.shape):
            return f"{where}.shape", f"every dimension must be 0 or more in a request, got {tensor.shape}"
        if not isinstance(tensor.data, list):
            return f"{where}.data", "must be a list (flat or nested, row-major)"
        elements = _flat(tensor.data)
        expected = math.prod(tensor.shape)
        if len(elements) != expected:
            return f"{where}.data", f"has {len(elements)} elements, but shape {tensor.shape} holds {expected}"
        for position, element in enumerate(elements):
            if not _element_fits(tensor.datatype, element):
                return f"{where}.data", f"element {position} ({element!r:.40}) is not a {tensor.datatype} value"
    return None
