"""The gateway: balancing, retries around a dead agent, waking a model at zero."""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from collections.abc import Collection
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tars_gateway.routes import Endpoint, RouteTable
from tars_gateway.server import create_app


def table_with(model: str, endpoints: list[tuple[str, bool]], node_agents: list[str] = ()) -> RouteTable:  # type: ignore[assignment]
    table = RouteTable()
    table.model_nodes[model] = "tars"
    table.set_slice(model, "s", [(Endpoint(address), ready) for address, ready in endpoints])
    table.node_agents["tars"] = [Endpoint(a) for a in node_agents]
    return table


def test_least_outstanding_requests() -> None:
    table = table_with("m", [("a:1", True), ("b:1", True)])
    busy = Endpoint("a:1")
    table.started(busy)
    assert [table.pick("m").address for _ in range(4)] == ["b:1"] * 4  # type: ignore[union-attr]
    table.finished(busy)
    picks = Counter(table.pick("m").address for _ in range(10))  # type: ignore[union-attr]
    assert picks == {"a:1": 5, "b:1": 5}


def test_not_ready_endpoints_are_skipped_and_zero_falls_back_to_the_nodes_agents() -> None:
    table = table_with("m", [("a:1", False)], node_agents=["n:1"])
    assert table.pick("m") == Endpoint("n:1")
    table.set_slice("m", "s", [(Endpoint("a:1"), True)])
    assert table.pick("m") == Endpoint("a:1")
    assert table.pick("m", exclude={"a:1"}) is None


async def _upstream(name: str, status: int = 200) -> TestServer:
    async def infer(request: web.Request) -> web.Response:
        return web.json_response({"served_by": name, "echo": await request.json()}, status=status)

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    server = TestServer(app)
    await server.start_server()
    return server


def settings(**overrides: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"attempts": 3, "wake_timeout": 2.0, "upstream_timeout": 5.0, **overrides})


async def _agent_ready_after(delay_s: float, table: RouteTable, upstream: TestServer) -> None:
    """The TarsNode's agent turns up in the table after ``delay_s``, announced as discovery does."""
    await asyncio.sleep(delay_s)
    table.node_agents["tars"] = [Endpoint(f"127.0.0.1:{upstream.port}")]
    table.changed()


async def _gateway(table: RouteTable, **overrides: Any) -> TestClient:
    client = TestClient(TestServer(create_app(table, settings(**overrides))))
    await client.start_server()
    return client


async def test_spreads_load_over_agents() -> None:
    a, b = await _upstream("a"), await _upstream("b")
    table = table_with("m", [(f"127.0.0.1:{a.port}", True), (f"127.0.0.1:{b.port}", True)])
    client = await _gateway(table)
    try:
        served = Counter()
        for i in range(10):
            response = await client.post("/v2/models/m/infer", json={"i": i})
            assert response.status == 200
            body = await response.json()
            assert body["echo"] == {"i": i}
            served[body["served_by"]] += 1
        assert served == {"a": 5, "b": 5}
    finally:
        await client.close()
        await a.close()
        await b.close()


async def test_requests_reuse_the_gateways_connection_to_an_agent() -> None:
    """Keep-alive to the agents: a connection per request would add a TCP handshake (and on a busy
    machine a scheduling round trip) to every answer."""
    peers: list[tuple[str, int]] = []

    async def infer(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername")[:2])  # type: ignore[union-attr]
        return web.json_response({"served_by": "a"})

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    upstream = TestServer(app)
    await upstream.start_server()
    client = await _gateway(table_with("m", [(f"127.0.0.1:{upstream.port}", True)]))
    try:
        for _ in range(5):
            assert (await client.post("/v2/models/m/infer", json={})).status == 200
        assert len(peers) == 5 and len(set(peers)) == 1, peers
    finally:
        await client.close()
        await upstream.close()


async def test_retries_around_a_dead_or_failing_agent() -> None:
    alive, failing = await _upstream("alive"), await _upstream("failing", status=503)
    dead = await _upstream("dead")
    dead_port = dead.port
    await dead.close()  # connection refused from now on
    table = table_with(
        "m", [(f"127.0.0.1:{dead_port}", True), (f"127.0.0.1:{failing.port}", True), (f"127.0.0.1:{alive.port}", True)]
    )
    client = await _gateway(table)
    try:
        for _ in range(6):
            response = await client.post("/v2/models/m/infer", json={})
            assert response.status == 200
            assert (await response.json())["served_by"] == "alive"
    finally:
        await client.close()
        await alive.close()
        await failing.close()


async def test_unknown_model_is_404_and_no_agent_is_503_with_retry_after() -> None:
    table = table_with("m", [])
    client = await _gateway(table, wake_timeout=0.2)
    try:
        assert (await client.post("/v2/models/nope/infer", json={})).status == 404
        response = await client.post("/v2/models/m/infer", json={})
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
    finally:
        await client.close()


async def test_a_request_at_zero_waits_for_an_agent_to_appear() -> None:
    upstream = await _upstream("woken")
    table = table_with("m", [])
    client = await _gateway(table, wake_timeout=3.0)

    try:
        waker = asyncio.create_task(_agent_ready_after(0.3, table, upstream))
        response = await client.post("/v2/models/m/infer", json={"x": 1})
        await waker
        assert response.status == 200
        assert (await response.json())["served_by"] == "woken"
    finally:
        await client.close()
        await upstream.close()


class CountingTable(RouteTable):
    """The real table, counting how often a request looks for an agent."""

    def __init__(self) -> None:
        super().__init__()
        self.picks = 0

    def pick(self, model: str, exclude: Collection[str] = (), avoid: Collection[str] = ()) -> Endpoint | None:
        self.picks += 1
        return super().pick(model, exclude, avoid)


async def test_a_held_request_looks_again_when_the_table_changes_not_on_a_poll() -> None:
    """Held for an agent, a request is woken by the table's change and forwarded then; it does not
    poll the table meanwhile (a burst held from zero polling every 20 ms burned the CPU it waited for)."""
    upstream = await _upstream("woken")
    table = CountingTable()
    table.model_nodes["m"] = "tars"
    client = await _gateway(table, wake_timeout=30.0)

    try:
        # 0.6 s: less than the gateway's safety-net recheck (1 s).
        waker = asyncio.create_task(_agent_ready_after(0.6, table, upstream))
        response = await client.post("/v2/models/m/infer", json={"x": 1})
        await waker
        assert response.status == 200
        assert (await response.json())["served_by"] == "woken"
        assert table.picks <= 3, f"{table.picks} looks at the table in 0.6 s: the held request polled it"
        assert table.listeners == []  # the request stopped listening once forwarded
    finally:
        await client.close()
        await upstream.close()


async def test_a_request_is_held_while_the_only_agent_drains_until_its_successor_is_ready() -> None:
    # A rolling update on one node: the old agent answers 503 (draining), the new one comes up 2 s later.
    draining, successor = await _upstream("old", status=503), await _upstream("new")
    table = table_with("m", [(f"127.0.0.1:{draining.port}", True)])
    client = await _gateway(table, wake_timeout=10.0)

    async def rolled() -> None:
        await asyncio.sleep(2.0)
        table.set_slice("m", "s", [(Endpoint(f"127.0.0.1:{successor.port}"), True)])
        table.changed()

    try:
        roll = asyncio.create_task(rolled())
        response = await client.post("/v2/models/m/infer", json={})
        await roll
        assert response.status == 200, await response.text()
        assert (await response.json())["served_by"] == "new"
    finally:
        await client.close()
        await draining.close()
        await successor.close()


async def test_an_agents_405_keeps_its_allow_header() -> None:
    upstream = await _upstream("a")
    client = await _gateway(table_with("m", [(f"127.0.0.1:{upstream.port}", True)]))
    try:
        response = await client.get("/v2/models/m/infer")
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
    finally:
        await client.close()
        await upstream.close()


def test_an_agent_failing_in_a_row_is_ejected_for_longer_each_time() -> None:
    from tars_gateway.outliers import EjectionPolicy, Outliers

    outliers = Outliers(EjectionPolicy(consecutive_failures=2, base_ejection_s=10, max_ejection_s=25))
    assert not outliers.failure("a", now=0)
    outliers.success("a")  # an answer breaks the run
    assert not outliers.failure("a", now=1)
    assert outliers.failure("a", now=2)
    assert outliers.ejected(now=11.9) == {"a"}
    assert outliers.ejected(now=12.1) == set()
    assert not outliers.failure("a", now=13)
    assert outliers.failure("a", now=14)
    assert outliers.ejected(now=33.9) == {"a"}  # second ejection: twice as long
    for now in (40, 41):
        outliers.failure("a", now=now)
    assert outliers.ejected(now=65.9) == {"a"} and outliers.ejected(now=66.1) == set()  # capped at 25 s


def test_ejected_agents_are_picked_only_when_nothing_else_is_left() -> None:
    table = table_with("m", [("a:1", True), ("b:1", True)])
    assert {table.pick("m", avoid={"a:1"}).address for _ in range(4)} == {"b:1"}  # type: ignore[union-attr]
    assert table.pick("m", exclude={"b:1"}, avoid={"a:1"}) == Endpoint("a:1")


def test_discovery_reads_what_the_operator_writes() -> None:
    from tars_api import TarsModel
    from tars_gateway.discovery import apply_model, apply_node, apply_slice
    from tars_operator.placement import AgentView
    from tars_operator.routing import desired_endpointslices

    model = TarsModel.model_validate(
        {
            "metadata": {"name": "m", "namespace": "ai", "uid": "u"},
            "spec": {"nodeRef": {"name": "tars"}, "kind": "sentiment", "source": "builtin://sentiment-vader"},
        }
    )
    agents = [
        AgentView("n1", True, 1, address="10.0.0.1:8080", loaded=frozenset({"ai/m"})),
        AgentView("n2", True, 1, address="10.0.0.2:8080"),
    ]
    table = RouteTable()
    apply_model(table, "ADDED", model.wire())
    for endpoint_slice in desired_endpointslices(model, {"n1": 1, "n2": 1}, agents):
        apply_slice(table, "ADDED", endpoint_slice)
    assert table.candidates("m") == [Endpoint("10.0.0.1:8080", "n1")]
    apply_slice(table, "DELETED", desired_endpointslices(model, {"n1": 1}, agents)[0])
    apply_node(
        table,
        "MODIFIED",
        {
            "metadata": {"name": "tars"},
            "status": {
                "agents": [
                    {"node": "n2", "address": "10.0.0.2:8080", "ready": True},
                    {"node": "n3", "address": "10.0.0.3:8080", "ready": False},
                ]
            },
        },
    )
    assert table.candidates("m") == [Endpoint("10.0.0.2:8080", "n2")]
