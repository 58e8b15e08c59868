"""Authentication and authorization against the real API server: TokenReview for ServiceAccount
tokens, Secrets for API keys; every case with its exact status, and nothing about the model in a
refusal."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tars_agent.agent import Agent
from tars_common.auth import AccessGuard
from tests.fixtures import ControlPlane
from tests.security.conftest import Tokens, guard_for, make_agent, serve, tars_model

PRIVATE = "private-echo"
INFER = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}
KEY = "tars-key-0123456789abcdef"
OTHER_KEY = "tars-key-fedcba9876543210"


@dataclass
class Setup:
    namespace: str
    other: str
    client: TestClient
    agent: Agent
    guard: AccessGuard
    tokens: Tokens

    async def infer(self, model: str = PRIVATE, **headers: str) -> tuple[int, str]:
        response = await self.client.post(f"/v2/models/{model}/infer", json=INFER, headers=headers)
        return response.status, await response.text()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def setup(
    control_plane: ControlPlane, namespace: str, kube_api: Any, backend: Any, tokens: Tokens
) -> AsyncIterator[Setup]:
    other = f"{namespace}-other"
    control_plane.kubectl("create", "namespace", other)
    for ns, sa in ((namespace, "caller"), (namespace, "bystander"), (other, "caller")):
        tokens.service_account(ns, sa)
    tokens.secret(namespace, "echo-keys", {"ci": KEY, "partner": OTHER_KEY})
    agent = make_agent(backend)
    access = {"serviceAccounts": [{"name": "caller"}], "apiKeySecrets": ["echo-keys"]}
    assert await agent.ensure_loaded(tars_model(PRIVATE, "builtin://echo", namespace, access=access))
    assert await agent.ensure_loaded(tars_model("team-echo", "builtin://echo", namespace, access={}))
    assert await agent.ensure_loaded(tars_model("legacy-echo", "builtin://echo", namespace))
    guard = guard_for(kube_api, agent.metrics.registry)
    client = await serve(agent, guard)
    yield Setup(namespace, other, client, agent, guard, tokens)
    await client.close()
    agent.close()
    control_plane.kubectl("delete", "namespace", other, "--wait=false", check=False)


async def test_service_account_tokens(setup: Setup, control_plane: ControlPlane) -> None:
    ns = setup.namespace
    valid = setup.tokens.token(ns, "caller")
    assert (await setup.infer(**bearer(valid)))[0] == 200
    # No credentials, garbage, a JWT-shaped forgery, the right name in another namespace, a
    # ServiceAccount of the model's namespace that spec.access does not list.
    assert (await setup.infer())[0] == 401
    assert (await setup.infer(**bearer("not-a-token")))[0] == 401
    forged = valid[: valid.rindex(".") + 1] + "c2lnbmF0dXJl"
    assert (await setup.infer(**bearer(forged)))[0] == 401
    assert (await setup.infer(**bearer(setup.tokens.token(setup.other, "caller"))))[0] == 403
    assert (await setup.infer(**bearer(setup.tokens.token(ns, "bystander"))))[0] == 403

    # A token whose ServiceAccount was deleted no longer verifies (the API server looks the SA up).
    setup.tokens.service_account(ns, "short-lived")
    orphan = setup.tokens.token(ns, "short-lived")
    control_plane.kubectl("delete", "serviceaccount", "short-lived", "-n", ns)
    assert (await setup.infer(**bearer(orphan)))[0] == 401


async def test_refusals_say_nothing_about_the_model(setup: Setup) -> None:
    outsider = setup.tokens.token(setup.other, "caller")
    for headers, status in (({}, 401), (bearer(outsider), 403)):
        got, body = await setup.infer(**headers)
        assert got == status
        assert PRIVATE not in body and "echo-keys" not in body and "caller" not in body
        assert body in ('{"error": "unauthorized"}', '{"error": "forbidden"}')


async def test_api_keys_valid_wrong_and_revoked(setup: Setup) -> None:
    ns = setup.namespace
    assert (await setup.infer(**{"X-API-Key": KEY}))[0] == 200
    assert (await setup.infer(**bearer(OTHER_KEY)))[0] == 200  # a non-JWT bearer value is an API key
    assert (await setup.infer(**{"X-API-Key": KEY[:-1] + "x"}))[0] == 401
    # A key of this model does not open a model that lists no key Secret.
    assert (await setup.infer("team-echo", **{"X-API-Key": KEY}))[0] == 401
    setup.tokens.drop_secret_entry(ns, "echo-keys", "ci")
    await asyncio.sleep(setup.guard.config.secret_cache_ttl_s + 0.2)
    assert (await setup.infer(**{"X-API-Key": KEY}))[0] == 401
    assert (await setup.infer(**{"X-API-Key": OTHER_KEY}))[0] == 200


async def test_empty_access_means_the_models_namespace_and_absent_access_follows_the_default(setup: Setup) -> None:
    mine, theirs = setup.tokens.token(setup.namespace, "bystander"), setup.tokens.token(setup.other, "caller")
    assert (await setup.infer("team-echo", **bearer(mine)))[0] == 200
    assert (await setup.infer("team-echo", **bearer(theirs)))[0] == 403
    assert (await setup.infer("team-echo"))[0] == 401
    # No spec.access and the secure default (namespace): the model's own namespace only.
    assert (await setup.infer("legacy-echo"))[0] == 401
    assert (await setup.infer("legacy-echo", **bearer(theirs)))[0] == 403
    assert (await setup.infer("legacy-echo", **bearer(mine)))[0] == 200


async def test_default_access_open_is_an_explicit_choice(setup: Setup, kube_api: Any, backend: Any) -> None:
    opened = guard_for(kube_api, default_access="open")  # a string, as from a flag
    client = await serve(setup.agent, opened)
    try:
        url = "/v2/models/legacy-echo/infer"
        assert (await client.post(url, json=INFER)).status == 200
        theirs = bearer(setup.tokens.token(setup.other, "caller"))
        assert (await client.post(url, json=INFER, headers=theirs)).status == 200
        # spec.access still wins over an open default.
        assert (await client.post("/v2/models/team-echo/infer", json=INFER)).status == 401
    finally:
        await client.close()


async def test_health_stays_open_metrics_can_need_a_token_and_decisions_are_counted(
    setup: Setup, kube_api: Any
) -> None:
    assert (await setup.client.get("/v2/health/live")).status == 200
    assert (await setup.client.get("/v2/health/ready")).status == 200
    valid = setup.tokens.token(setup.namespace, "caller")
    await setup.infer(**bearer(valid))
    await setup.infer()
    text = await (await setup.client.get("/metrics")).text()
    label = f"{setup.namespace}/{PRIVATE}"
    assert f'tars_agent_auth_decisions_total{{model="{label}",outcome="allowed"}} 1.0' in text
    assert f'tars_agent_auth_decisions_total{{model="{label}",outcome="unauthenticated"}} 1.0' in text

    locked = guard_for(kube_api, metrics_require_token=True)
    client = await serve(setup.agent, locked)
    try:
        assert (await client.get("/metrics")).status == 401
        assert (await client.get("/metrics", headers=bearer("junk"))).status == 401
        assert (await client.get("/metrics", headers=bearer(valid))).status == 200
        assert (await client.get("/v2/health/live")).status == 200
    finally:
        await client.close()


async def test_token_reviews_are_cached(setup: Setup) -> None:
    assert setup.guard.tokens is not None
    token = setup.tokens.token(setup.namespace, "caller")
    before = setup.guard.tokens.reviews
    started = time.perf_counter()
    for _ in range(5):
        assert (await setup.infer(**bearer(token)))[0] == 200
    assert setup.guard.tokens.reviews == before + 1, "one TokenReview for five requests with one token"
    assert time.perf_counter() - started < 10


async def test_gateway_refuses_early_and_forwards_credentials(setup: Setup, kube_api: Any) -> None:
    import argparse

    from aiohttp.test_utils import TestServer

    from tars_gateway.auth import ModelPolicies, gateway_middleware
    from tars_gateway.routes import Endpoint, RouteTable
    from tars_gateway.server import create_app as gateway_app

    table = RouteTable()
    table.model_nodes[PRIVATE] = "tars"
    table.set_slice(PRIVATE, "s", [(Endpoint(f"127.0.0.1:{setup.client.port}"), True)])
    # The TarsModel the gateway reads spec.access from.
    setup.tokens.plane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "tars.hyperlight.dev/v1alpha1",
                "kind": "TarsModel",
                "metadata": {"name": PRIVATE, "namespace": setup.namespace},
                "spec": {
                    "nodeRef": {"name": "tars"},
                    "kind": "function",
                    "source": "builtin://echo",
                    "access": {"serviceAccounts": [{"name": "caller"}], "apiKeySecrets": ["echo-keys"]},
                },
            }
        ),
    )
    guard = guard_for(kube_api)
    settings = argparse.Namespace(attempts=1, wake_timeout=1.0, upstream_timeout=10.0)
    middleware = gateway_middleware(guard, ModelPolicies(kube_api, setup.namespace))
    gateway = TestClient(TestServer(gateway_app(table, settings, middleware)))
    await gateway.start_server()
    try:
        url = f"/v2/models/{PRIVATE}/infer"
        labels = {"model": f"{setup.namespace}/{PRIVATE}", "outcome": "unauthenticated"}
        sample = "tars_agent_auth_decisions_total"
        before = setup.agent.metrics.registry.get_sample_value(sample, labels)
        assert (await gateway.post(url, json=INFER)).status == 401
        # Refused at the gateway: the agent never saw the request.
        after = setup.agent.metrics.registry.get_sample_value(sample, labels)
        assert after == before
        outsider = bearer(setup.tokens.token(setup.other, "caller"))
        assert (await gateway.post(url, json=INFER, headers=outsider)).status == 403
        valid = bearer(setup.tokens.token(setup.namespace, "caller"))
        assert (await gateway.post(url, json=INFER, headers=valid)).status == 200
        assert (await gateway.post(url, json=INFER, headers={"X-API-Key": KEY})).status == 200
        assert (await gateway.get("/v2/health/live")).status == 200
    finally:
        await gateway.close()
