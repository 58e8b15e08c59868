"""Data-plane edges a hostile client found (issue 17, item 7), each with the answer it must get."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tars_agent.agent import Agent
from tars_agent.server import CONNECTIONS, create_app
from tars_common.http_limits import HttpLimits

from .conftest import SharedBackend, make_agent, tars_model


@pytest.fixture
async def client(agent: Agent) -> AsyncIterator[TestClient]:
    c = TestClient(TestServer(create_app(agent)))
    await c.start_server()
    yield c
    await c.close()


def tensor(datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": datatype, "shape": shape, "data": data}]}


async def test_huge_integer_is_400(client: TestClient) -> None:
    resp = await client.post("/v1/functions/echo:invoke", data="[" + "9" * 5000 + "]")
    assert resp.status == 400 and (await resp.json())["field"] == "body"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_non_finite_numbers_are_400(client: TestClient, literal: str) -> None:
    resp = await client.post("/v1/functions/echo:invoke", data='{"x": ' + literal + "}")
    assert resp.status == 400, await resp.text()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (tensor("BYTES", [-1], ["a"]), "inputs.0.shape"),
        (tensor("BYTES", [3], ["a", "b"]), "inputs.0.data"),
        (tensor("BYTES", [2, 2], [["a", "b"], ["c"]]), "inputs.0.data"),
        (tensor("INT8", [1], [300]), "inputs.0.data"),
        (tensor("UINT32", [1], [-1]), "inputs.0.data"),
        (tensor("INT32", [1], [1.5]), "inputs.0.data"),
        (tensor("FP32", [1], ["1.0"]), "inputs.0.data"),
        (tensor("BOOL", [1], [1]), "inputs.0.data"),
        (tensor("BYTES", [1], [7]), "inputs.0.data"),
        (tensor("BYTES", [1], "not-a-list"), "inputs.0.data"),
    ],
)
async def test_tensor_mismatches_are_400_naming_the_field(client: TestClient, body: Any, field: str) -> None:
    resp = await client.post("/v2/models/echo/infer", json=body)
    answer = await resp.json()
    assert resp.status == 400 and answer["field"] == field, answer
    assert answer["error"].startswith(field)


async def test_consistent_tensors_still_pass(client: TestClient) -> None:
    for body in (tensor("BYTES", [2, 1], [["a"], ["b"]]), tensor("FP32", [2], [1, 2.5]), tensor("BOOL", [0], [])):
        resp = await client.post("/v2/models/echo/infer", json=body)
        assert resp.status == 200, await resp.text()


async def test_deep_nesting_is_400_at_the_edge(client: TestClient) -> None:
    deep = "[" * 900 + "]" * 900
    resp = await client.post("/v1/functions/echo:invoke", data=deep)
    assert resp.status == 400 and "nests deeper than 64" in (await resp.json())["error"]
    fine = "[" * 60 + "]" * 60
    assert (await client.post("/v1/functions/echo:invoke", data=fine)).status == 200


async def test_405_carries_allow(client: TestClient) -> None:
    resp = await client.get("/v2/models/echo/infer")
    assert resp.status == 405 and resp.headers["Allow"] == "POST"


async def test_a_client_that_leaves_is_a_499_not_an_error(
    client: TestClient, agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    _reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /v1/functions/echo:invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"half": '
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await asyncio.sleep(0.3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    samples = {
        s.labels["status"]: s.value
        for metric in agent.metrics.registry.collect()
        if metric.name == "tars_agent_requests"
        for s in metric.samples
        if s.name.endswith("_total")
    }
    assert samples.get("499") == 1 and "500" not in samples, samples


async def test_slow_clients_and_excess_connections_are_cut_off(backend: SharedBackend) -> None:
    agent = make_agent(backend)
    agent.config = replace(agent.config, http_limits=HttpLimits(max_connections=3, header_timeout_s=0.5))
    assert await agent.ensure_loaded(tars_model("echo", "builtin://echo"))
    app = create_app(agent)
    runner = web.AppRunner(app)
    await runner.setup()
    listener = await app[CONNECTIONS].serve(runner, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    slow = []
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /v2/health/live HTTP/1.1\r\n")  # and never the rest of the headers
            slow.append((reader, writer))
        await asyncio.sleep(0.1)
        over, _ = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(over.read(), 2) == b""  # the fourth is closed on arrival
        for reader, _writer in slow:  # the slow ones are closed once their header deadline passes
            assert await asyncio.wait_for(reader.read(), 3) == b""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # room again
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        for _reader, writer in slow:
            writer.close()
        listener.close()
        await runner.cleanup()
        agent.close()
