"""The Open Inference Protocol's binary tensor data extension (KServe/Triton), both directions.

A message is a JSON header followed by the tensors' bytes, back to back, in the order of the tensors
whose ``parameters.binary_data_size`` says how many bytes are theirs; the HTTP header
``Inference-Header-Content-Length`` gives the JSON header's length. Elements are little-endian,
row-major; BYTES elements each carry a 4-byte little-endian length prefix. The gRPC service's
``raw_input_contents``/``raw_output_contents`` use the same element encoding.

Pure functions: the agent decodes requests and encodes responses, the gRPC front door translates.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSION = "binary_tensor_data"
CONTENT_TYPE = "application/octet-stream"
DTYPES = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


class BinaryError(ValueError):
    """A binary message that does not add up; ``field`` names the part at fault, dotted."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def decode(datatype: str, raw: bytes, where: str) -> list[Any]:
    """The tensor's elements, flat, as JSON would carry them (BYTES as text)."""
    if datatype == "BYTES":
        elements, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise BinaryError(where, "a BYTES element's 4-byte length prefix is cut short")
            (size,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise BinaryError(where, f"a BYTES element of {size} bytes runs past the tensor's data")
            try:
                elements.append(raw[offset : offset + size].decode())
            except UnicodeDecodeError:
                raise BinaryError(where, "BYTES elements must be UTF-8 text here") from None
            offset += size
        return elements
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise BinaryError(where, f"unknown datatype {datatype!r}")
    if len(raw) % dtype.itemsize:
        raise BinaryError(where, f"{len(raw)} bytes is not a whole number of {datatype} elements")
    values = np.frombuffer(raw, dtype=dtype)
    if dtype.kind == "f" and not np.isfinite(values).all():
        raise BinaryError(where, "NaN and infinity are not accepted")
    return list(values.tolist())


def encode(datatype: str, data: Any) -> bytes:
    """Flat or nested elements as the extension's bytes."""
    if datatype != "BYTES":
        return np.asarray(data, dtype=DTYPES[datatype]).tobytes()  # numpy flattens nested lists row-major
    parts = []
    for element in np.asarray(data, dtype=object).reshape(-1).tolist():
        blob = element if isinstance(element, bytes) else str(element).encode()
        parts.append(struct.pack("<I", len(blob)) + blob)
    return b"".join(parts)


def split(body: bytes, header_length: str | int) -> tuple[dict[str, Any], bytes]:
    """(JSON header, the bytes after it) of a binary message."""
    try:
        length = int(header_length)
    except ValueError:
        raise BinaryError(HEADER_LENGTH, f"must be a byte count, got {str(header_length)[:40]!r}") from None
    if not 0 < length <= len(body):
        raise BinaryError(HEADER_LENGTH, f"{length} is outside the body's {len(body)} bytes")
    try:
        header = json.loads(body[:length])
    except ValueError as exc:
        raise BinaryError("body", f"the JSON header is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise BinaryError("body", "the JSON header must be an object")
    return header, body[length:]


def take_binary(tensors: Iterable[dict[str, Any]], data: bytes, prefix: str) -> list[bytes | None]:
    """Each tensor's own bytes (None for a tensor with JSON data); every byte must be claimed."""
    out: list[bytes | None] = []
    offset = 0
    for index, tensor in enumerate(tensors):
        params = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            out.append(None)
            continue
        where = f"{prefix}.{index}.parameters.binary_data_size"
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BinaryError(where, "must be a byte count")
        if offset + size > len(data):
            raise BinaryError(where, f"claims {size} bytes, but only {len(data) - offset} follow")
        out.append(data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise BinaryError("body", f"{len(data) - offset} bytes after the JSON header belong to no tensor")
    return out


def decode_request(body: bytes, header_length: str | int) -> dict[str, Any]:
    """A binary inference request as the JSON request it stands for (``data`` filled in)."""
    header, data = split(body, header_length)
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        return header  # validation names the missing inputs
    blobs = take_binary(inputs, data, "inputs")
    for index, (tensor, blob) in enumerate(zip(inputs, blobs, strict=True)):
        if blob is None:
            continue
        if "data" in tensor:
            raise BinaryError(f"inputs.{index}.data", "give data or parameters.binary_data_size, not both")
        tensor["data"] = decode(str(tensor.get("datatype")), blob, f"inputs.{index}")
        del tensor["parameters"]["binary_data_size"]
        if not tensor["parameters"]:
            del tensor["parameters"]
    return header


def wants_binary(request: dict[str, Any], output_name: str) -> bool:
    """Whether the request asked for this output in binary (per output, else request-wide)."""
    for wanted in request.get("outputs") or []:
        if wanted.get("name") == output_name:
            binary = (wanted.get("parameters") or {}).get("binary_data")
            if binary is not None:
                return bool(binary)
    return bool((request.get("parameters") or {}).get("binary_data_output", False))


def encode_response(response: dict[str, Any], binary: set[str]) -> tuple[bytes, int] | None:
    """(body, JSON header length) with the named outputs moved to binary; None when none is."""
    blobs: list[bytes] = []
    for output in response.get("outputs", []):
        if output["name"] not in binary:
            continue
        blob = encode(output["datatype"], output.pop("data"))
        output["parameters"] = {**(output.get("parameters") or {}), "binary_data_size": len(blob)}
        blobs.append(blob)
    if not blobs:
        return None
    header = json.dumps(response).encode()
    return header + b"".join(blobs), len(header)
