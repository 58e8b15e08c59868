"""The tokens a request asks for (the text-generation scaling signal) and the weighted load meter."""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient, TestServer

from tars_agent.agent import ConcurrencyMeter
from tars_agent.assembly import sleep_bundle
from tars_agent.demand import DEFAULT_MAX_TOKENS, requested_tokens
from tars_agent.server import create_app
from tars_api.tarsmodel import TarsModelSpec

from .conftest import SharedBackend, make_agent, tars_model

GENERATION = TarsModelSpec.model_validate(
    {"nodeRef": {"name": "n"}, "kind": "text-generation", "source": "file:///models/edge", "maxTokens": 256}
)
SENTIMENT = TarsModelSpec.model_validate(
    {"nodeRef": {"name": "n"}, "kind": "sentiment", "source": "builtin://sentiment-vader"}
)


def test_tokens_come_from_max_tokens_capped_at_the_model_limit() -> None:
    assert requested_tokens(GENERATION, json.dumps({"prompt": "hi", "max_tokens": 100})) == 100
    oip = {"inputs": [{"name": "prompt", "data": ["hi"]}], "parameters": {"max_tokens": 64}}
    assert requested_tokens(GENERATION, json.dumps(oip)) == 64
    assert requested_tokens(GENERATION, json.dumps({"prompt": "hi", "max_tokens": 4000})) == 256
    assert requested_tokens(GENERATION, json.dumps({"prompt": "hi"})) == DEFAULT_MAX_TOKENS
    assert requested_tokens(GENERATION, json.dumps({"prompt": "hi", "max_tokens": True})) == DEFAULT_MAX_TOKENS
    assert requested_tokens(GENERATION, "[1, 2]") == 0


def test_other_kinds_ask_for_no_tokens() -> None:
    assert requested_tokens(SENTIMENT, json.dumps({"max_tokens": 100})) == 0


def test_the_meter_averages_weights_over_time() -> None:
    now = [0.0]
    meter = ConcurrencyMeter(clock=lambda: now[0])
    meter.begin("m", 300)  # 300 tokens for the whole second
    now[0] = 0.5
    meter.begin("m", 100)  # 100 more for its second half
    now[0] = 1.0
    assert meter.read() == {"m": 350.0}
    meter.end("m", 300)
    meter.end("m", 100)
    now[0] = 2.0
    assert meter.read() == {"m": 0.0}


async def test_the_agent_reports_the_tokens_of_requests_in_flight(backend: SharedBackend) -> None:
    """A generation request asking for 100 tokens that takes half a second shows in the token report;
    the same request to a model of another kind adds no tokens."""
    agent = make_agent(backend)
    agent.catalog.builtins["sleep"] = sleep_bundle
    for name, kind in (("gen", "text-generation"), ("fn", "function")):
        model = tars_model(name, "builtin://sleep", kind=kind, capabilities=["clock.sleep"], maxTokens=256)
        assert await agent.ensure_loaded(model), agent.repository.failed
    client = TestClient(TestServer(create_app(agent)))
    await client.start_server()
    try:
        agent.start_load_window()
        for name in ("gen", "fn"):
            answer = await client.post(f"/v1/functions/{name}:invoke", json={"sleep_ms": 500, "max_tokens": 100})
            assert answer.status == 200, await answer.text()
        tokens, in_flight = agent.token_report(), agent.load_report()
    finally:
        await client.close()
        agent.close()
    assert tokens["default/gen"] > 10  # 100 tokens for about half of the window
    assert tokens["default/fn"] == 0
    assert in_flight["default/gen"] > 0.1 and in_flight["default/fn"] > 0.1
