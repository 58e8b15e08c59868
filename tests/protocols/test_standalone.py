"""The clients users already have, against a standalone agent (authentication off, as standalone mode
runs): tritonclient over HTTP with its binary default, tritonclient over gRPC, OpenAI's client."""

from __future__ import annotations

import asyncio
import json

from tests.protocols import clients
from tests.protocols.conftest import Served


async def test_tritonclient_http_binary(agent_served: Served) -> None:
    await asyncio.to_thread(clients.http_triton, agent_served.http, {})


async def test_tritonclient_grpc(agent_served: Served) -> None:
    await asyncio.to_thread(clients.grpc_triton, agent_served.grpc, {})
    await asyncio.to_thread(clients.grpc_typed_contents, agent_served.grpc, {})


async def test_openai_client(agent_served: Served) -> None:
    await asyncio.to_thread(clients.openai_generation, agent_served.http, "unused")


async def test_binary_errors_over_http_are_json_naming_the_field(agent_served: Served) -> None:
    header = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 9}}]}
    ).encode()
    response = await agent_served.client.post(
        "/v2/models/sentiment/infer",
        data=header + b"\x03\0\0\0abc",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status == 400
    body = await response.json()
    assert body["field"] == "inputs.0.parameters.binary_data_size" and "only 7 follow" in body["error"]
    server = await (await agent_served.client.get("/v2")).json()
    assert "binary_tensor_data" in server["extensions"]
