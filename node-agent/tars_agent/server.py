"""The HTTP data plane (aiohttp): Open Inference Protocol v2, a raw invoke route, OpenAPI and /metrics.

Routes are declared once in :func:`routes`; the same table registers the aiohttp handlers and
generates ``/openapi.json``, so the document cannot miss a route.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from tars_agent import openai_compat
from tars_agent.agent import Agent
from tars_agent.demand import requested_tokens
from tars_agent.pool import Overloaded, Unavailable
from tars_agent.protocol import (
    MAX_JSON_DEPTH,
    ErrorResponse,
    GuestInferResult,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
    TensorMetadata,
    first_error_field,
    guest_infer_input,
    json_depth_exceeds,
    tensor_problem,
)
from tars_agent.repository import AmbiguousModel, LoadedModel
from tars_agent.sandbox.base import FailureReason, GuestFailure
from tars_agent.tenancy import FairAdmission
from tars_api.tarsmodel import ModelKind
from tars_common import oip_binary
from tars_common.auth import AccessGuard, ModelPolicy, auth_middleware
from tars_common.http_limits import CLIENT_CLOSED_REQUEST, ConnectionGuard
from tars_common.requested_model import requested_model

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RETRY_AFTER_S = 1
AGENT = web.AppKey("agent", Agent)
MODEL_LABEL = web.RequestKey("model_label", str)
# Set when the request waited for its model to be loaded on this agent (a cold start).
COLD_START = web.RequestKey("cold_start", bool)
COLD_START_HEADER = "X-Tars-Cold-Start"
ADMISSION = web.AppKey("admission", FairAdmission)
CONNECTIONS = web.AppKey("connections", ConnectionGuard)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        *,
        field: str | None = None,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.body = ErrorResponse(error=error, field=field, reason=reason)
        self.headers = headers or {}


def json_response(
    body: BaseModel | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    data = body.model_dump(exclude_none=True) if isinstance(body, BaseModel) else body
    return web.json_response(data, status=status, headers=headers)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    content_type: str = "application/json"


ROUTES = web.AppKey("routes", list[Route])


async def read_json(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body exceeds {request.app[AGENT].config.max_body_bytes} bytes") from None
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except ValueError as exc:  # also UnicodeDecodeError, and integers past Python's 4,300 digits
        raise ApiError(400, f"request body is not valid JSON: {str(exc)[:200]}", field="body") from None
    except RecursionError:  # a hostile body nested deeper than the parser's recursion limit
        raise ApiError(400, "request body is nested too deeply", field="body") from None
    if json_depth_exceeds(body):
        raise ApiError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels", field="body")
    return body


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; accepted, they would be echoed back as invalid JSON.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range for a JSON number")
    return value


async def lookup_model(agent: Agent, name: str, request: web.Request | None = None) -> LoadedModel:
    """The loaded model; in cluster mode a model of this agent's TarsNode that is not loaded here
    (scaled to zero, or placed elsewhere) is loaded on the spot and served, not refused: ``request``,
    if given, is then marked a cold start."""
    try:
        model = agent.repository.find(name)
        if model is None and agent.on_demand is not None and (wanted := agent.on_demand(name)) is not None:
            if request is not None:
                request[COLD_START] = True
            await agent.wake(wanted)
            model = agent.repository.find(name)
    except AmbiguousModel as exc:
        raise ApiError(409, str(exc)) from None
    if model is None:
        raise ApiError(404, f"model {name!r} is not loaded on this agent")
    return model


def guest_failure_error(agent: Agent, label: str, failure: GuestFailure) -> ApiError:
    """The answer to a guest that gave no result (counted and logged); the native front's too."""
    agent.metrics.guest_failures.labels(label, failure.reason.value).inc()
    log.warning("guest %s failed (%s): %s %s", label, failure.reason.value, failure.public, failure.detail[-500:])
    if failure.reason is FailureReason.REJECTED:
        return ApiError(422, f"rejected by the model: {failure.public}", reason=failure.reason.value)
    if failure.reason is FailureReason.UNAVAILABLE:
        return ApiError(
            503,
            f"unavailable: {failure.public}",
            reason=failure.reason.value,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return ApiError(500, f"guest failed: {failure.public}", reason=failure.reason.value)


def guest_answer(
    agent: Agent, label: str, model_name: str, version: str, request_id: str | None, output: str
) -> InferResponse:
    """The InferResponse for a guest's output, or the 500 of a guest that returned no valid outputs."""
    try:
        result = GuestInferResult.model_validate_json(output)
    except ValidationError:
        agent.metrics.guest_failures.labels(label, FailureReason.ERROR.value).inc()
        raise ApiError(
            500, "guest failed: it returned no valid inference outputs", reason=FailureReason.ERROR.value
        ) from None
    return InferResponse(
        model_name=model_name,
        model_version=version,
        id=request_id,
        parameters=result.parameters,
        outputs=result.outputs,
    )


async def run_guest(request: web.Request, model: LoadedModel, input_json: str) -> str:
    agent: Agent = request.app[AGENT]
    label = str(model.key)
    request[MODEL_LABEL] = label
    gauge = agent.metrics.in_flight.labels(label)
    gauge.inc()
    agent.concurrency.begin(label)
    tokens = requested_tokens(model.spec, input_json)
    agent.tokens.begin(label, tokens)
    agent.rates.record(label)
    try:
        # Per-model fair admission first, so a busy tenant queues (or gets 429) in its own line. The
        # slot is held until the guest has really stopped, even when the client was answered earlier.
        admission = request.app[ADMISSION]
        await admission.acquire(label)
        return await agent.repository.invoke(model, input_json, on_stopped=lambda: admission.release(label))
    except GuestFailure as failure:
        raise guest_failure_error(agent, label, failure) from None
    except Overloaded as busy:
        agent.metrics.rejected.labels(label, "overload").inc()
        raise ApiError(
            429, "too many requests queued; retry later", headers={"Retry-After": str(busy.retry_after)}
        ) from None
    except Unavailable:
        agent.metrics.rejected.labels(label, "draining").inc()
        raise ApiError(503, "agent is shutting down", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    finally:
        gauge.dec()
        agent.concurrency.end(label)
        agent.tokens.end(label, tokens)


def model_metadata(model: LoadedModel) -> ModelMetadata:
    return ModelMetadata(
        name=model.key.name,
        versions=[model.version],
        platform=model.bundle.platform,
        inputs=[TensorMetadata.model_validate(t) for t in model.bundle.inputs],
        outputs=[TensorMetadata.model_validate(t) for t in model.bundle.outputs],
        namespace=model.key.namespace,
        kind=str(model.spec.kind),
        source=model.spec.source,
        capabilities=[str(c) for c in model.spec.capabilities],
    )


async def _live(_request: web.Request) -> web.Response:
    return json_response(ServerLive(live=True))


async def _ready(request: web.Request) -> web.Response:
    is_ready = request.app[AGENT].ready()
    return json_response(ServerReady(ready=is_ready), status=200 if is_ready else 503)


async def _server_metadata(request: web.Request) -> web.Response:
    agent: Agent = request.app[AGENT]
    return json_response(
        ServerMetadata(
            name="tars-agent",
            version=metadata.version("tars-k8s"),
            extensions=[oip_binary.EXTENSION, "tars-functions", "openai"],
            backend=agent.backend.name,
            backend_reason=agent.backend_reason,
        )
    )


async def _model_meta(request: web.Request) -> web.Response:
    return json_response(model_metadata(await lookup_model(request.app[AGENT], request.match_info["name"])))


async def _model_ready(request: web.Request) -> web.Response:
    agent: Agent = request.app[AGENT]
    model = await lookup_model(agent, request.match_info["name"])
    return json_response(ModelReady(name=model.key.name, ready=not agent.draining))


async def read_infer_body(request: web.Request) -> Any:
    """The request as JSON, the binary tensor extension's bytes decoded into ``data``."""
    header_length = request.headers.get(oip_binary.HEADER_LENGTH)
    if header_length is None:
        return await read_json(request)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body exceeds {request.app[AGENT].config.max_body_bytes} bytes") from None
    try:
        body = oip_binary.decode_request(raw, header_length)
    except oip_binary.BinaryError as exc:
        raise ApiError(400, str(exc), field=exc.field) from None
    if json_depth_exceeds(body):
        raise ApiError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels", field="body")
    return body


def infer_answer(body: Any, response: InferResponse) -> web.Response:
    """JSON, or the binary extension's form for the outputs the request asked in binary."""
    data = response.model_dump(exclude_none=True)
    if isinstance(body, dict):
        binary = {out["name"] for out in data["outputs"] if oip_binary.wants_binary(body, out["name"])}
        if binary and (encoded := oip_binary.encode_response(data, binary)) is not None:
            payload, header_length = encoded
            headers = {oip_binary.HEADER_LENGTH: str(header_length)}
            return web.Response(body=payload, content_type=oip_binary.CONTENT_TYPE, headers=headers)
    return web.json_response(data)


async def _infer(request: web.Request) -> web.Response:
    model = await lookup_model(request.app[AGENT], request.match_info["name"], request)
    body = await read_infer_body(request)
    try:
        infer_request = InferRequest.model_validate(body)
    except ValidationError as exc:
        field, message = first_error_field(exc)
        raise ApiError(422, f"{field}: {message}", field=field) from None
    problem = tensor_problem(infer_request)
    if problem is not None:
        raise ApiError(400, f"{problem[0]}: {problem[1]}", field=problem[0])
    output = await run_guest(request, model, json.dumps(guest_infer_input(infer_request)))
    agent = request.app[AGENT]
    return infer_answer(
        body, guest_answer(agent, str(model.key), model.key.name, model.version, infer_request.id, output)
    )


async def _invoke(request: web.Request) -> web.Response:
    model = await lookup_model(request.app[AGENT], request.match_info["name"], request)
    body = await read_json(request)
    output = await run_guest(request, model, json.dumps(body))
    return web.Response(text=json_output(output), content_type="application/json")


def json_output(output: str) -> str:
    """A function's output, or the 500 of a guest that returned no JSON; the native front's too."""
    try:
        json.loads(output)
    except json.JSONDecodeError:
        raise ApiError(500, "guest failed: it returned invalid JSON", reason=FailureReason.ERROR.value) from None
    return output


async def _openai(request: web.Request, schema: type[openai_compat.OpenAIRequest]) -> web.StreamResponse:
    """Thin: validation and the guest here, shapes in tars_agent.openai_compat; errors in OpenAI's form."""
    try:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object", field="body")
        if (unsupported := openai_compat.unsupported_field(body)) is not None:
            raise ApiError(400, f"{unsupported} is not supported by this runtime", field=unsupported)
        try:
            wanted = schema.model_validate(body)
        except ValidationError as exc:
            field, message = first_error_field(exc)
            raise ApiError(400, f"{field}: {message}", field=field) from None
        model = await lookup_model(request.app[AGENT], wanted.model, request)
        if model.spec.kind != ModelKind.TEXT_GENERATION:
            kind = model.spec.kind
            raise ApiError(400, f"model {wanted.model!r} is a {kind} model, not text-generation", field="model")
        reply = json.loads(await run_guest(request, model, json.dumps(openai_compat.guest_input(wanted))))
    except ApiError as exc:
        error = openai_compat.error_body(exc.body.error, exc.body.field, exc.status)
        return web.json_response(error, status=exc.status, headers=exc.headers)
    if not wanted.stream:
        return web.json_response(openai_compat.answer(wanted, reply))
    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await stream.prepare(request)
    for event in openai_compat.stream_events(wanted, reply):
        await stream.write(event)
    await stream.write_eof()
    return stream


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _openai(request, openai_compat.CompletionRequest)


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _openai(request, openai_compat.ChatRequest)


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[ROUTES]))


async def _metrics(request: web.Request) -> web.Response:
    agent: Agent = request.app[AGENT]
    for model in list(agent.repository.models.values()):
        agent.metrics.pool_size.labels(str(model.key)).set(model.pool.ready_count())
    body = generate_latest(agent.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def routes() -> list[Route]:
    """The data plane's routes; the same table serves requests and the OpenAPI document."""
    return [
        Route("GET", "/v2/health/live", _live, "Liveness: the process serves HTTP.", response=ServerLive),
        Route(
            "GET",
            "/v2/health/ready",
            _ready,
            "Readiness: every desired model is loaded and the agent is not draining.",
            response=ServerReady,
            errors=(503,),
        ),
        Route(
            "GET", "/v2", _server_metadata, "Server metadata and the sandbox backend in use.", response=ServerMetadata
        ),
        Route(
            "GET",
            "/v2/models/{name}",
            _model_meta,
            "Model metadata.",
            response=ModelMetadata,
            errors=(401, 403, 404, 409),
        ),
        Route(
            "GET",
            "/v2/models/{name}/ready",
            _model_ready,
            "Model readiness.",
            response=ModelReady,
            errors=(401, 403, 404, 409),
        ),
        Route(
            "POST",
            "/v2/models/{name}/infer",
            _infer,
            "Run inference in a fresh sandbox (Open Inference Protocol v2).",
            request=InferRequest,
            response=InferResponse,
            errors=(400, 401, 403, 404, 409, 413, 422, 429, 500, 503),
        ),
        Route(
            "POST",
            "/v1/functions/{name}:invoke",
            _invoke,
            "Invoke a guest function: JSON in, the guest's JSON out.",
            errors=(400, 401, 403, 404, 409, 413, 429, 500, 503),
        ),
        Route(
            "POST",
            "/openai/v1/completions",
            _completions,
            "OpenAI-compatible completion from a text-generation model (stream: server-sent events).",
            request=openai_compat.CompletionRequest,
            errors=(400, 401, 403, 404, 409, 413, 422, 429, 500, 503),
        ),
        Route(
            "POST",
            "/openai/v1/chat/completions",
            _chat_completions,
            "OpenAI-compatible chat completion from a text-generation model (stream: server-sent events).",
            request=openai_compat.ChatRequest,
            errors=(400, 401, 403, 404, 409, 413, 422, 429, 500, 503),
        ),
        Route("GET", "/openapi.json", _openapi, "This document."),
        Route("GET", "/metrics", _metrics, "Prometheus metrics.", content_type="text/plain"),
    ]


_STATUS_TEXT = {
    400: "Body is not JSON",
    401: "No valid credentials (ServiceAccount token or API key); see WWW-Authenticate",
    403: "The caller is not in the model's spec.access",
    404: "Unknown model",
    409: "Ambiguous model name",
    413: "Body too large",
    422: "Body fails validation",
    429: "Overloaded; see Retry-After",
    500: "Guest failed",
    503: "Not ready or draining; see Retry-After",
}


def openapi_document(table: list[Route]) -> dict[str, Any]:
    """OpenAPI 3.1 for the route table, schemas from the pydantic models."""
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error = {"content": {"application/json": {"schema": ref(ErrorResponse)}}}
    paths: dict[str, Any] = {}
    for route in table:
        op: dict[str, Any] = {"summary": route.summary, "operationId": route.handler.__name__, "responses": {}}
        if "{name}" in route.path:
            op["parameters"] = [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "Model name (metadata.name of the TarsModel).",
                }
            ]
        body_schema = ref(route.request) if route.request else {}
        if route.method == "POST":
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_schema}}}
        ok_schema = ref(route.response) if route.response else {}
        op["responses"]["200"] = {"description": "OK", "content": {route.content_type: {"schema": ok_schema}}}
        for status in route.errors:
            op["responses"][str(status)] = {"description": _STATUS_TEXT[status], **error}
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "TARS node-agent data plane", "version": metadata.version("tars-k8s")},
        "paths": paths,
        "components": {"schemas": schemas},
    }


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if request.get(COLD_START):
            response.headers[COLD_START_HEADER] = "true"  # the gateway's cold-start histogram reads it
        return response
    except ApiError as exc:
        status = exc.status
        return json_response(exc.body, status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        # aiohttp's own refusals (404 route, 405 method, 413 body): same JSON shape as ours, and
        # their headers (a 405's Allow) kept.
        status = exc.status
        kept = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return json_response(ErrorResponse(error=exc.reason), status=exc.status, headers=kept)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response(ErrorResponse(error="internal error"), status=500)
    finally:
        if request.transport is None or request.transport.is_closing():
            status = CLIENT_CLOSED_REQUEST  # the client left before its answer: not the server's failure
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "<unmatched>"
        if route not in ("/metrics",):
            model = request.get(MODEL_LABEL, "")
            agent: Agent = request.app[AGENT]
            agent.metrics.requests.labels(model, route, str(status)).inc()
            agent.metrics.latency.labels(model, route, str(status)).observe(time.perf_counter() - started)
            if model and status < 400:
                start = "cold" if request.get(COLD_START) else "warm"
                agent.metrics.answers.labels(model, start).observe(time.perf_counter() - started)


async def model_policy(request: web.Request) -> ModelPolicy | None:
    """The access policy of the model a request names, without loading it (an unauthenticated caller
    must not be able to make the agent load anything); None for unknown or ambiguous names."""
    name = await requested_model(request)
    if name is None:
        return None
    agent: Agent = request.app[AGENT]
    try:
        loaded = agent.repository.find(name)
    except AmbiguousModel:
        return None
    if loaded is not None:
        return ModelPolicy(loaded.key.namespace, loaded.key.name, loaded.spec.access)
    wanted = agent.on_demand(name) if agent.on_demand is not None else None
    if wanted is None:
        return None
    return ModelPolicy(wanted.metadata.namespace, wanted.metadata.name, wanted.spec.access)


def create_app(
    agent: Agent, guard: AccessGuard | None = None, admission: FairAdmission | None = None
) -> web.Application:
    # Slow clients and connection caps (tars_common.http_limits) right inside the metrics: the guard
    # times the body and turns a client that left into a 499, which the metrics then count.
    # Serve the app with ``app[CONNECTIONS].serve(runner, ...)``.
    connections = ConnectionGuard(agent.config.http_limits)
    middlewares = [errors_and_metrics, connections.middleware]
    if guard is not None and guard.config.enabled:
        middlewares.append(auth_middleware(guard, model_policy))
    app = web.Application(client_max_size=agent.config.max_body_bytes, middlewares=middlewares)
    app[AGENT] = agent
    app[CONNECTIONS] = connections
    app[ADMISSION] = admission or FairAdmission(
        agent.config.workers,
        agent.config.max_queue,
        models_loaded=lambda: len(agent.repository.models),
        batched=agent.waits_in_batches,
    )
    table = routes()
    app[ROUTES] = table
    for route in table:
        app.router.add_route(route.method, route.path, route.handler)
    return app
