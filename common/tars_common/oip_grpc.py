"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``), as a front door
onto the same process's REST data plane.

Each call becomes the REST request it stands for, sent over loopback to the agent's (or gateway's)
own HTTP listener, with the caller's ``authorization`` / ``x-api-key`` metadata as headers: one path
for authentication, per-model access, limits, fair admission, metrics, retries and errors. Tensors
travel as the binary tensor extension (``tars_common.oip_binary``) both ways, so ``raw_*_contents``
pass through untouched. REST refusals become gRPC status codes with the same message, which names
the field at fault (``inputs.0.data: ...``).

The message classes live in a private descriptor pool, built from ``grpc_predict_v2.proto`` when
first needed: a process may also hold a client's own copy of the protocol (tritonclient's), which
the default pool would refuse as duplicate symbols.
"""

from __future__ import annotations

import functools
import json
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tars_common import oip_binary

SERVICE = "inference.GRPCInferenceService"
PROTO = Path(__file__).with_name("grpc_predict_v2.proto")
FORWARDED_METADATA = ("authorization", "x-api-key")
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Typed contents field of each datatype (FP16 has none: raw contents only, as the protocol says).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@functools.cache
def messages() -> dict[str, Any]:
    """Message classes by name, compiled from the .proto into a pool of their own."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--descriptor_set_out={out}"]
        subprocess.run([*command, PROTO.name], check=True, capture_output=True)
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:
        pool.Add(proto)
    package = pool.FindFileByName(PROTO.name)
    return {name: message_factory.GetMessageClass(desc) for name, desc in package.message_types_by_name.items()}


class CallFailed(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


def _param_value(param: Any) -> Any:
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def _params(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _param_value(value) for key, value in fields.items()}


def _set_params(target: Any, values: Mapping[str, Any] | None) -> None:
    for key, value in (values or {}).items():
        if key == "binary_data_size":
            continue
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        else:
            target[key].string_param = value if isinstance(value, str) else json.dumps(value)


def _input_bytes(request: Any, index: int, tensor: Any) -> bytes:
    where = f"inputs.{index}"
    if request.raw_input_contents:
        if index >= len(request.raw_input_contents):
            raise CallFailed(grpc.StatusCode.INVALID_ARGUMENT, f"raw_input_contents: no entry for input {index}")
        return bytes(request.raw_input_contents[index])
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        hint = "FP16 needs raw_input_contents" if tensor.datatype == "FP16" else "unknown datatype"
        raise CallFailed(grpc.StatusCode.INVALID_ARGUMENT, f"{where}.datatype: {tensor.datatype!r}: {hint}")
    try:
        return oip_binary.encode(tensor.datatype, list(getattr(tensor.contents, field)))
    except (OverflowError, ValueError) as exc:
        raise CallFailed(grpc.StatusCode.INVALID_ARGUMENT, f"{where}.contents.{field}: {exc}") from None


def rest_infer_request(request: Any) -> tuple[bytes, int]:
    """A ModelInferRequest as the REST binary extension's (body, JSON header length)."""
    blobs, inputs = [], []
    for index, tensor in enumerate(request.inputs):
        blob = _input_bytes(request, index, tensor)
        blobs.append(blob)
        params = {**_params(tensor.parameters), "binary_data_size": len(blob)}
        inputs.append(
            {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape), "parameters": params}
        )
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise CallFailed(grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents: one entry per input, in order")
    header: dict[str, Any] = {
        "inputs": inputs,
        "parameters": {**_params(request.parameters), "binary_data_output": True},
    }
    if request.id:
        header["id"] = request.id
    if request.outputs:
        header["outputs"] = [
            {"name": o.name, "parameters": {**_params(o.parameters), "binary_data": True}} for o in request.outputs
        ]
    encoded = json.dumps(header).encode()
    return encoded + b"".join(blobs), len(encoded)


def infer_response(body: bytes, header_length: str | None) -> Any:
    """The REST answer (binary extension or plain JSON) as a ModelInferResponse with raw contents."""
    if header_length is not None:
        answer, data = oip_binary.split(body, header_length)
        blobs = oip_binary.take_binary(answer.get("outputs", []), data, "outputs")
    else:
        answer = json.loads(body)
        blobs = [None] * len(answer.get("outputs", []))
    response = messages()["ModelInferResponse"](
        model_name=answer.get("model_name", ""),
        model_version=answer.get("model_version") or "",
        id=answer.get("id") or "",
    )
    _set_params(response.parameters, answer.get("parameters"))
    for output, blob in zip(answer.get("outputs", []), blobs, strict=True):
        tensor = response.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        _set_params(tensor.parameters, output.get("parameters"))
        response.raw_output_contents.append(
            blob if blob is not None else oip_binary.encode(output["datatype"], output["data"])
        )
    return response


class RestBridge:
    """The service's calls, each one REST request to ``base_url`` (this process's own listener)."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext | bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self, context: Any, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, Mapping[str, str]]:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ssl=self._ssl)
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
        sent = {k: v for k, v in (context.invocation_metadata() or ()) if k in FORWARDED_METADATA}
        sent.update(headers or {})
        async with self._session.request(method, f"{self.base_url}{path}", data=body, headers=sent) as answer:
            return answer.status, await answer.read(), answer.headers

    async def ok(self, context: Any, method: str, path: str, **kwargs: Any) -> tuple[bytes, Mapping[str, str]]:
        """The answer's body; a refusal aborts the call with its status code and message."""
        status, body, headers = await self.call(context, method, path, **kwargs)
        if status >= 400:
            try:
                message = str(json.loads(body).get("error", ""))
            except (ValueError, AttributeError):
                message = body[:200].decode(errors="replace")
            await context.abort(STATUS_CODES.get(status, grpc.StatusCode.INTERNAL), message or f"HTTP {status}")
        return body, headers


def _model_path(name: str, suffix: str = "") -> str:
    from urllib.parse import quote

    return f"/v2/models/{quote(name, safe='')}{suffix}"


def servicer(bridge: RestBridge) -> dict[str, Callable[[Any, Any], Awaitable[Any]]]:
    """The service's methods by name: each a thin translation onto ``bridge``."""
    m = messages()

    async def server_live(_request: Any, context: Any) -> Any:
        status, _, _ = await bridge.call(context, "GET", "/v2/health/live")
        return m["ServerLiveResponse"](live=status == 200)

    async def server_ready(_request: Any, context: Any) -> Any:
        status, _, _ = await bridge.call(context, "GET", "/v2/health/ready")
        return m["ServerReadyResponse"](ready=status == 200)

    async def server_metadata(_request: Any, context: Any) -> Any:
        body, _ = await bridge.ok(context, "GET", "/v2")
        meta = json.loads(body)
        return m["ServerMetadataResponse"](name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    async def model_ready(request: Any, context: Any) -> Any:
        body, _ = await bridge.ok(context, "GET", _model_path(request.name, "/ready"))
        return m["ModelReadyResponse"](ready=bool(json.loads(body).get("ready")))

    async def model_metadata(request: Any, context: Any) -> Any:
        body, _ = await bridge.ok(context, "GET", _model_path(request.name))
        meta = json.loads(body)
        tensors = {
            key: [dict(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta[key]]
            for key in ("inputs", "outputs")
        }
        return m["ModelMetadataResponse"](
            name=meta["name"], versions=meta["versions"], platform=meta["platform"], **tensors
        )

    async def model_infer(request: Any, context: Any) -> Any:
        try:
            payload, header_length = rest_infer_request(request)
            headers = {oip_binary.HEADER_LENGTH: str(header_length), "Content-Type": oip_binary.CONTENT_TYPE}
            body, answer = await bridge.ok(
                context, "POST", _model_path(request.model_name, "/infer"), body=payload, headers=headers
            )
            return infer_response(body, answer.get(oip_binary.HEADER_LENGTH))
        except CallFailed as exc:
            await context.abort(exc.code, exc.details)

    return {
        "ServerLive": server_live,
        "ServerReady": server_ready,
        "ServerMetadata": server_metadata,
        "ModelReady": model_ready,
        "ModelMetadata": model_metadata,
        "ModelInfer": model_infer,
    }


def _handler(name: str, method: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    request_cls, response_cls = messages()[f"{name}Request"], messages()[f"{name}Response"]
    return grpc.unary_unary_rpc_method_handler(
        method, request_deserializer=request_cls.FromString, response_serializer=response_cls.SerializeToString
    )


async def start(
    bridge: RestBridge,
    host: str,
    port: int,
    max_message_bytes: int,
    tls: tuple[bytes, bytes] | None = None,
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, int]:
    """Serve the service on host:port (0: a free port); ``tls`` is (key PEM, cert PEM). Returns the
    server and the port it took. Without ``reuse_port`` a port another process holds is an error
    (gRPC would otherwise share it silently, and split calls between unrelated servers)."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", int(reuse_port)),
    ]
    server = grpc.aio.server(options=options)
    handlers = {name: _handler(name, method) for name, method in servicer(bridge).items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    address = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
    await server.start()
    return server, bound
