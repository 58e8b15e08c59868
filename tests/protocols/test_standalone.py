"""The clients users already have, against a standalone agent (authentication off, as standalone mode
runs): tritonclient over HTTP with its binary default, tritonclient over gRPC, OpenAI's client."""

from __future__ import annotations

import asyncio

from tests.protocols import clients
from tests.protocols.conftest import Served


async def test_tritonclient_http_binary(agent_served: Served) -> None:
    await asyncio.to_thread(clients.http_triton, agent_served.http, {})


async def test_tritonclient_grpc(agent_served: Served) -> None:
    await asyncio.to_thread(clients.grpc_triton, agent_served.grpc, {})
    await asyncio.to_thread(clients.grpc_typed_contents, agent_served.grpc, {})


async def test_openai_client(agent_served: Served) -> None:
    await asyncio.to_thread(clients.openai_generation, agent_served.http, "unused")
