"""builtin://sentiment-vader is served by the compiled VADER guest, over the agent's own HTTP routes.

A real agent on the Wasmtime path it takes by default (native when tars_native is installed) answers
both routes with vaderSentiment's own scores on the reference sentences, counts the requests in its
metrics, and keeps the Python app as the guest Hyperlight runs from source; that app still serves as a
user's .wasm function (the example of a Python guest with a library). Where the crate is not installed
(the container image), the component staged by the build machine is the one served.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from tars_agent.agent import Agent, AgentConfig
from tars_agent.capabilities import ModelKey
from tars_agent.server import create_app
from tars_api import TarsModel
from tars_guests.apps import app_dir, build_app
from tars_guests.compiled import STAGED_ENV, build_compiled, built_elsewhere, stage
from tests.agent.test_compiled_vader import DEMO
from tests.models.test_guests import SENTENCES

from .conftest import DEFAULT_PATH, backend_on_path

ANALYZER = SentimentIntensityAnalyzer()
SENTIMENT = TarsModel.model_validate(
    {
        "metadata": {"name": "sentiment", "namespace": "default"},
        "spec": {"nodeRef": {"name": "test"}, "kind": "sentiment", "source": "builtin://sentiment-vader"},
    }
)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Agent, TestClient]]:
    agent = Agent(AgentConfig(warm_pool_size=2, workers=2), backend_on_path(DEFAULT_PATH))
    assert await agent.ensure_loaded(SENTIMENT), agent.repository.failed
    client = TestClient(TestServer(create_app(agent)))
    await client.start_server()
    try:
        yield agent, client
    finally:
        await client.close()
        agent.close()


async def test_the_builtin_is_the_compiled_guest_and_hyperlight_keeps_the_python_app(
    served: tuple[Agent, TestClient],
) -> None:
    agent, _client = served
    guest = agent.repository.models[ModelKey("default", "sentiment")].bundle.guest
    assert guest.component == build_compiled("vader")
    assert guest.app_dir == app_dir("sentiment")


async def test_both_routes_answer_vadersentiments_scores(served: tuple[Agent, TestClient]) -> None:
    _agent, client = served
    for sentence in SENTENCES + DEMO:
        expected = ANALYZER.polarity_scores(sentence)
        invoked = await client.post("/v1/functions/sentiment:invoke", json={"text": sentence})
        assert invoked.status == 200, await invoked.text()
        assert await invoked.json() == {"scores": expected}, sentence
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [sentence]}]
        inferred = await client.post("/v2/models/sentiment/infer", json={"inputs": inputs})
        assert inferred.status == 200, await inferred.text()
        outputs = {o["name"]: o["data"] for o in (await inferred.json())["outputs"]}
        assert outputs == {name: [expected[name]] for name in ("neg", "neu", "pos", "compound")}, sentence
    refused = await client.post("/v1/functions/sentiment:invoke", json={"text": 42})
    assert refused.status == 422 and "text" in await refused.text()
    metrics = await (await client.get("/metrics")).text()
    served_ok = [
        line
        for line in metrics.splitlines()
        if line.startswith("tars_agent_requests_total{") and 'model="default/sentiment"' in line and '"200"' in line
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in served_ok) == 2 * len(SENTENCES + DEMO), served_ok


def test_without_the_crate_the_staged_component_is_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's case: no crate, no cargo; first the build stage's directory, then the prebuilt one."""
    no_crates = tmp_path / "site-packages" / "compiled"
    no_crates.mkdir(parents=True)
    monkeypatch.delenv(STAGED_ENV, raising=False)
    monkeypatch.delenv("TARS_PREBUILT_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"compiled-vader\.wasm"):
        built_elsewhere("vader", no_crates)
    staged = stage(tmp_path / "context")
    assert [p.name for p in staged] == ["compiled-vader.wasm", "compiled-embedding.wasm"]
    assert staged[0].read_bytes() == build_compiled("vader").read_bytes()
    monkeypatch.setenv(STAGED_ENV, str(tmp_path / "context"))
    assert built_elsewhere("vader", no_crates) == staged[0]
    prebuilt = tmp_path / "prebuilt"
    (prebuilt / "guests").mkdir(parents=True)
    shutil.copyfile(staged[0], prebuilt / "guests" / "compiled-vader.wasm")
    monkeypatch.delenv(STAGED_ENV)
    monkeypatch.setenv("TARS_PREBUILT_DIR", str(prebuilt))
    assert built_elsewhere("vader", no_crates) == prebuilt / "guests" / "compiled-vader.wasm"
    # A checkout (the crate is there) builds from its sources whatever is staged.
    assert built_elsewhere("vader") is None


async def test_the_python_vader_app_serves_as_a_users_wasm_function() -> None:
    """The componentize-py app, kept as an example of a Python guest with a library, loaded from a file."""
    component = build_app("sentiment")
    agent = Agent(
        AgentConfig(warm_pool_size=1, workers=2, model_roots=(component.parent,)), backend_on_path(DEFAULT_PATH)
    )
    model = TarsModel.model_validate(
        {
            "metadata": {"name": "vader-py", "namespace": "default"},
            "spec": {"nodeRef": {"name": "test"}, "kind": "function", "source": f"file://{component}"},
        }
    )
    try:
        assert await agent.ensure_loaded(model), agent.repository.failed
        loaded = agent.repository.models[ModelKey("default", "vader-py")]
        answer = await agent.repository.invoke(loaded, json.dumps({"texts": SENTENCES}))
        assert json.loads(answer) == {"results": [ANALYZER.polarity_scores(s) for s in SENTENCES]}
    finally:
        agent.close()
