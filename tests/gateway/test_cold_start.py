"""Waking a model from zero through the gateway (issue 22): one agent is woken, as placement would
choose, a burst loads the model once, and cold answers are counted apart from warm ones in both the
agent's and the gateway's histograms, read back by scraping /metrics."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from tars_agent.agent import Agent, AgentConfig
from tars_agent.capabilities import ModelKey
from tars_agent.sandbox.wasmtime_backend import WasmtimeBackend
from tars_agent.server import create_app as agent_app
from tars_api import TarsModel
from tars_gateway.discovery import apply_model, apply_node
from tars_gateway.routes import Endpoint, RouteTable
from tars_gateway.server import create_app as gateway_app

BODY = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}


@dataclass
class Wired:
    gateway: TestClient
    agents: list[TestClient]
    model: str
    agent_objects: list[Agent]


def sleeping_model(name: str) -> TarsModel:
    spec = {"nodeRef": {"name": "tars"}, "kind": "function", "source": "builtin://echo", "replicas": 0}
    return TarsModel.model_validate({"metadata": {"name": name, "namespace": "default"}, "spec": spec})


@pytest.fixture
async def wired() -> AsyncIterator[Wired]:
    """Two real agents (Wasmtime, the echo guest) that load the model on demand, as in cluster mode,
    behind a real gateway whose table says the model is at zero replicas."""
    model = f"cold-{uuid.uuid4().hex[:6]}"
    backend = WasmtimeBackend()
    agents: list[TestClient] = []
    closing: list[Agent] = []
    for _ in range(2):
        agent = Agent(AgentConfig(workers=2, warm_pool_size=1), backend)
        agent.on_demand = {model: sleeping_model(model)}.get
        closing.append(agent)
        client = TestClient(TestServer(agent_app(agent)))
        await client.start_server()
        agents.append(client)
    table = RouteTable()
    table.model_nodes[model] = "tars"
    addresses = [f"127.0.0.1:{c.server.port}" for c in agents]
    table.node_agents["tars"] = [Endpoint(a, f"node-{i}") for i, a in enumerate(addresses)]
    # node-1 offers more memory after what is placed there: placement would choose it.
    table.agent_capacity = {addresses[0]: 1024, addresses[1]: 4096}
    settings = argparse.Namespace(attempts=3, wake_timeout=5.0, upstream_timeout=30.0)
    gateway = TestClient(TestServer(gateway_app(table, settings)))
    await gateway.start_server()
    yield Wired(gateway, agents, model, closing)
    await gateway.close()
    for client in agents:
        await client.close()
    for agent in closing:
        agent.close()  # stops the backend too


async def samples(client: TestClient, metric: str) -> dict[tuple[str, str], float]:
    """(model, start) -> count of the histogram ``metric``, from a scrape of /metrics."""
    text = await (await client.get("/metrics")).text()
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{metric}_count":
                counts[(sample.labels["model"], sample.labels["start"])] = sample.value
    return counts


async def test_a_burst_from_zero_wakes_one_agent_and_counts_cold_apart_from_warm(wired: Wired) -> None:
    url = f"/v2/models/{wired.model}/infer"
    burst = await asyncio.gather(*(wired.gateway.post(url, json=BODY) for _ in range(4)))
    assert [r.status for r in burst] == [200] * 4
    assert all(r.headers.get("X-Tars-Cold-Start") == "true" for r in burst), "each waited for the load"
    warm = await wired.gateway.post(url, json=BODY)
    assert warm.status == 200
    assert "X-Tars-Cold-Start" not in warm.headers

    woken = [await samples(agent, "tars_agent_answer_duration_seconds") for agent in wired.agents]
    # The agent with the most free memory took the whole burst; the other never loaded the model.
    assert woken[1] == {(f"default/{wired.model}", "cold"): 4, (f"default/{wired.model}", "warm"): 1}
    assert (f"default/{wired.model}", "cold") not in woken[0]
    # ... and remembers it woke the model, which keeps it loaded until the operator places it there.
    assert list(wired.agent_objects[1].woken) == [ModelKey("default", wired.model)]
    assert wired.agent_objects[0].woken == {}

    at_gateway = await samples(wired.gateway, "tars_gateway_answer_duration_seconds")
    assert at_gateway[(wired.model, "cold")] == 4
    assert at_gateway[(wired.model, "warm")] == 1


def test_the_wake_target_is_placements_choice_and_stays_while_the_model_loads() -> None:
    table = RouteTable()
    apply_node(
        table,
        "ADDED",
        {
            "metadata": {"name": "tars"},
            "status": {
                "agents": [
                    {"node": "n0", "address": "a0:1", "ready": True, "capacityMiB": 4096},
                    {"node": "n1", "address": "a1:1", "ready": True, "capacityMiB": 4096},
                ]
            },
        },
    )
    # Another model holds 3 GiB on n0: placement would put a new replica on n1.
    placed = {"placements": [{"node": "n0", "replicas": 3}]}
    busy = {"spec": {"nodeRef": {"name": "tars"}, "memoryMiB": 1024}, "status": placed}
    apply_model(table, "ADDED", {"metadata": {"name": "other"}, **busy})
    apply_model(table, "ADDED", {"metadata": {"name": "m"}, "spec": {"nodeRef": {"name": "tars"}, "memoryMiB": 256}})
    first = table.pick("m")
    assert first == Endpoint("a1:1", "n1")
    table.started(first)  # busier now, but the model is loading there: the next request follows it
    assert table.pick("m") == first
    assert table.pick("m", exclude={"a1:1"}) == Endpoint("a0:1", "n0")  # a retry goes elsewhere
    table.set_slice("m", "s", [(Endpoint("a1:1", "n1"), True)])
    assert table.pick("m") == first and "m" not in table.waking
