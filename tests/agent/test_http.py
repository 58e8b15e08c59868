"""The HTTP data plane through aiohttp's test client, against real sandboxes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tars_agent.agent import Agent
from tars_agent.capabilities import ModelKey
from tars_agent.server import create_app

from .conftest import STANDARD_MODELS, make_agent, tars_model


async def client_for(agent: Agent) -> TestClient:
    client = TestClient(TestServer(create_app(agent)))
    await client.start_server()
    return client


@pytest.fixture
async def client(agent: Agent) -> AsyncIterator[TestClient]:
    c = await client_for(agent)
    yield c
    await c.close()


def infer_body(*texts: str, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}], **extra}


async def test_health(client: TestClient) -> None:
    live = await client.get("/v2/health/live")
    assert live.status == 200 and await live.json() == {"live": True}
    ready = await client.get("/v2/health/ready")
    assert ready.status == 200 and await ready.json() == {"ready": True}


async def test_server_metadata_names_backend(client: TestClient) -> None:
    body = await (await client.get("/v2")).json()
    assert body["name"] == "tars-agent" and body["backend"] == "wasmtime"


async def test_model_metadata_and_ready(client: TestClient) -> None:
    meta = await client.get("/v2/models/echo")
    assert meta.status == 200
    body = await meta.json()
    assert body["name"] == "echo" and body["namespace"] == "default" and body["capabilities"] == ["clock.now"]
    assert body["inputs"][0]["datatype"] == "BYTES" and body["versions"] == ["1"]
    ready = await client.get("/v2/models/echo/ready")
    assert ready.status == 200 and await ready.json() == {"name": "echo", "ready": True}


async def test_infer_round_trip(client: TestClient) -> None:
    resp = await client.post("/v2/models/echo/infer", json=infer_body("hi", "there", id="req-1"))
    assert resp.status == 200
    body = await resp.json()
    assert body["model_name"] == "echo" and body["id"] == "req-1" and body["model_version"] == "1"
    assert body["outputs"] == [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hi", "there"]}]


async def test_invoke_raw_json(client: TestClient) -> None:
    resp = await client.post("/v1/functions/echo:invoke", json={"call": "clock.now"})
    assert resp.status == 200
    assert "unix" in (await resp.json())["result"]


async def test_unknown_model_is_404(client: TestClient) -> None:
    for method, path in [
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("POST", "/v2/models/nope/infer"),
        ("POST", "/v1/functions/nope:invoke"),
    ]:
        resp = await client.request(method, path, json=infer_body("x"))
        assert resp.status == 404, path
        assert "nope" in (await resp.json())["error"]


async def test_bad_json_is_400(client: TestClient) -> None:
    for path in ("/v2/models/echo/infer", "/v1/functions/echo:invoke"):
        resp = await client.post(path, data=b"{not json", headers={"Content-Type": "application/json"})
        assert resp.status == 400
        body = await resp.json()
        assert body["field"] == "body" and "not valid JSON" in body["error"]


async def test_invalid_infer_request_is_422_naming_the_field(client: TestClient) -> None:
    bad = infer_body("x")
    bad["inputs"][0]["datatype"] = "STRING"
    resp = await client.post("/v2/models/echo/infer", json=bad)
    assert resp.status == 422
    assert (await resp.json())["field"] == "inputs.0.datatype"
    resp = await client.post("/v2/models/echo/infer", json={"inputs": []})
    assert resp.status == 422 and (await resp.json())["field"] == "inputs"
    resp = await client.post("/v2/models/echo/infer", json={**infer_body("x"), "surprise": 1})
    assert resp.status == 422 and (await resp.json())["field"] == "surprise"


async def test_body_too_large_is_413(backend: Any) -> None:
    agent = make_agent(backend, max_body_bytes=1024)
    await agent.ensure_loaded(STANDARD_MODELS[0])
    client = await client_for(agent)
    try:
        resp = await client.post("/v1/functions/echo:invoke", json={"blob": "x" * 4096})
        assert resp.status == 413
        assert "error" in await resp.json()
    finally:
        await client.close()
        agent.close()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"do": "loop"}, "timeout"),
        ({"do": "allocate", "mib": 512}, "memory"),
        ({"do": "flood", "bytes": 100_000}, "output"),
        ({"do": "crash"}, "error"),
    ],
)
async def test_guest_failure_is_500_with_reason_and_no_host_detail(
    client: TestClient, agent: Agent, payload: dict[str, Any], reason: str
) -> None:
    resp = await client.post("/v1/functions/tight:invoke", json=payload)
    assert resp.status == 500
    body = await resp.json()
    assert body["reason"] == reason
    text = json.dumps(body)
    for leak in ("wasm", "Traceback", "/work", "backtrace", "guest bug"):
        assert leak not in text
    assert agent.metrics.guest_failures.labels("default/tight", reason)._value.get() >= 1


async def test_guest_rejecting_its_input_is_422(client: TestClient) -> None:
    resp = await client.post("/v1/functions/hostile:invoke", json={"do": "no-such-action"})
    assert resp.status == 422
    body = await resp.json()
    assert body["reason"] == "rejected"
    assert "unknown action: no-such-action" in body["error"]


async def test_deeply_nested_json_is_400_not_500(client: TestClient) -> None:
    resp = await client.post(
        "/v1/functions/echo:invoke", data="[" * 100_000 + "]" * 100_000, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert (await resp.json())["field"] == "body"


async def test_guest_refusing_an_infer_request_is_422(client: TestClient) -> None:
    resp = await client.post("/v2/models/hostile/infer", json=infer_body("x"))  # hostile refuses "inputs"
    assert resp.status == 422
    assert (await resp.json())["reason"] == "rejected"


async def test_overload_is_429_with_retry_after(backend: Any) -> None:
    agent = make_agent(backend, workers=1, max_queue=0)
    await agent.ensure_loaded(STANDARD_MODELS[1])
    client = await client_for(agent)
    try:
        slow = asyncio.create_task(
            client.post(
                "/v1/functions/hostile:invoke",
                json={"do": "call", "name": "operator.request", "args": {"seconds": 0.5}},
            )
        )
        await asyncio.sleep(0.15)
        resp = await client.post("/v1/functions/hostile:invoke", json={"do": "state"})
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"
        assert (await slow).status == 200
        resp = await client.post("/v1/functions/hostile:invoke", json={"do": "state"})
        assert resp.status == 200
    finally:
        await client.close()
        agent.close()


async def test_draining_is_unready_and_503_but_finishes_in_flight(backend: Any) -> None:
    agent = make_agent(backend)
    await agent.ensure_loaded(STANDARD_MODELS[1])
    client = await client_for(agent)
    try:
        in_flight = asyncio.create_task(
            client.post(
                "/v1/functions/hostile:invoke",
                json={"do": "call", "name": "operator.request", "args": {"seconds": 0.5}},
            )
        )
        await asyncio.sleep(0.15)
        drained = asyncio.create_task(agent.drain())
        await asyncio.sleep(0.05)
        assert (await client.get("/v2/health/ready")).status == 503
        resp = await client.post("/v1/functions/hostile:invoke", json={"do": "state"})
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        assert (await in_flight).status == 200
        assert await drained is True
    finally:
        await client.close()
        agent.close()


async def test_a_model_that_failed_is_unready_on_its_own(backend: Any) -> None:
    # The failure stays with its model: the agent, and the models it does serve, stay ready.
    agent = make_agent(backend)
    assert not await agent.ensure_loaded(tars_model("broken", "builtin://does-not-exist"))
    assert await agent.ensure_loaded(tars_model("echo", "builtin://echo"))
    client = await client_for(agent)
    try:
        assert (await client.get("/v2/health/ready")).status == 200
        assert (await client.get("/v2/models/echo/ready")).status == 200
        assert (await client.get("/v2/models/broken/ready")).status != 200
        assert "does-not-exist" in agent.repository.failed[ModelKey("default", "broken")]
    finally:
        await client.close()
        agent.close()


async def test_same_name_in_two_namespaces_is_409(backend: Any) -> None:
    agent = make_agent(backend)
    await agent.ensure_loaded(tars_model("echo", "builtin://echo", namespace="team-a"))
    await agent.ensure_loaded(tars_model("echo", "builtin://echo", namespace="team-b"))
    client = await client_for(agent)
    try:
        resp = await client.post("/v1/functions/echo:invoke", json={})
        assert resp.status == 409
    finally:
        await client.close()
        agent.close()


async def test_openapi_describes_every_route(client: TestClient) -> None:
    doc = await (await client.get("/openapi.json")).json()
    registered = {
        (route.method.lower(), route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    described = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert registered == described
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]
    assert {"200", "400", "404", "422", "429", "500", "503"} <= set(infer["responses"])
    assert "InferRequest" in doc["components"]["schemas"]


async def test_metrics_after_traffic(client: TestClient) -> None:
    await client.post("/v2/models/echo/infer", json=infer_body("x"))
    await client.post("/v1/functions/tight:invoke", json={"do": "loop"})
    await client.post("/v1/functions/hostile:invoke", json={"do": "call", "name": "log.write", "args": {}})
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    for needle in (
        'tars_agent_requests_total{model="default/echo",route="/v2/models/{name}/infer",status="200"} 1.0',
        'tars_agent_request_duration_seconds_bucket{le="0.25",model="default/echo"',
        'tars_agent_guest_failures_total{model="default/tight",reason="timeout"} 1.0',
        'tars_agent_host_calls_total{capability="log.write",model="default/hostile",outcome="denied"} 1.0',
        "tars_agent_sandbox_start_seconds_bucket",
        'tars_agent_pool_size{model="default/echo"}',
        'tars_agent_in_flight_requests{model="default/echo"} 0.0',
        'tars_agent_backend_info{backend="wasmtime"',
        "tars_agent_models_loaded 3.0",
    ):
        assert needle in text, needle


async def test_metrics_include_the_process_own_memory_and_cpu(client: TestClient) -> None:
    text = await (await client.get("/metrics")).text()
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"):
        assert f"\n{name}" in text, name
