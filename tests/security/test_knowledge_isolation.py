"""Host capabilities never hand one tenant another tenant's data: knowledge stores are keyed by the
calling TarsModel (namespace/name), whatever a guest puts in its arguments.

Real pieces throughout: the agent's default catalog and capabilities (knowledge.* backed by the real
MiniLM embedder), Wasmtime sandboxes, and a guest that calls any capability with any arguments it
likes (the hostile test app), standing for a malicious tenant.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tars_agent.agent import Agent, AgentConfig
from tars_agent.runtimes.services import KNOWLEDGE_DIR_ENV
from tests.agent.conftest import TEST_LIMITS, hostile_bundle
from tests.security.conftest import tars_model

CAPS = ["knowledge.query", "knowledge.upsert"]
SECRET = "Team A's payroll database password rotates every Tuesday."
SPOOFS: list[dict[str, Any]] = [
    {},
    {"tenant": "team-a/kb"},
    {"namespace": "team-a", "model": "kb", "name": "kb"},
    {"collection": "../team-a/kb", "store": "team-a/kb"},
]


@pytest.fixture
async def shared_agent(backend: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # Team A also has documents on the node, loaded into its store on first use.
    (tmp_path / "team-a" / "kb").mkdir(parents=True)
    (tmp_path / "team-a" / "kb" / "runbook.md").write_text("Team A's on-call rota lives in the vault.")
    monkeypatch.setenv(KNOWLEDGE_DIR_ENV, str(tmp_path))
    config = AgentConfig(workers=2, max_queue=8, warm_pool_size=1, node_limits=TEST_LIMITS)
    agent = Agent(config, backend, "wasmtime requested by the tests")
    agent.catalog.builtins["hostile"] = hostile_bundle
    # The same model name in two namespaces: two tenants on one agent.
    for ns in ("team-a", "team-b"):
        assert await agent.ensure_loaded(tars_model("kb", "builtin://hostile", ns, capabilities=CAPS))
    yield agent
    agent.close()


async def call(agent: Agent, namespace: str, name: str, capability: str, args: dict[str, Any]) -> Any:
    from tars_agent.capabilities import ModelKey

    model = agent.repository.models[ModelKey(namespace, name)]
    out = json.loads(await agent.repository.invoke(model, json.dumps({"do": "call", "name": capability, "args": args})))
    assert "result" in out, out
    return out["result"]


async def test_a_tenant_cannot_read_another_tenants_knowledge_store(
    shared_agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    upsert = {"documents": [{"id": "secret", "text": SECRET}]}
    assert (await call(shared_agent, "team-a", "kb", "knowledge.upsert", upsert))["upserted"] == 1
    own = await call(shared_agent, "team-a", "kb", "knowledge.query", {"query": "payroll password", "top_k": 5})
    assert {hit["id"] for hit in own["hits"]} == {"secret", "runbook.md"}

    caplog.set_level(logging.INFO, logger="tars_agent.audit")
    for spoof in SPOOFS:
        theirs = await call(
            shared_agent, "team-b", "kb", "knowledge.query", {"query": "payroll password on-call", "top_k": 50, **spoof}
        )
        assert theirs == {"hits": [], "store_size": 0}, spoof
        assert "payroll" not in json.dumps(theirs) and "vault" not in json.dumps(theirs)

    # Team B's own upsert, even one naming team A, lands in team B's store only.
    planted = {"documents": [{"id": "secret", "text": "overwritten"}], "tenant": "team-a/kb"}
    await call(shared_agent, "team-b", "kb", "knowledge.upsert", planted)
    again = await call(shared_agent, "team-a", "kb", "knowledge.query", {"query": "payroll password", "top_k": 5})
    assert next(h for h in again["hits"] if h["id"] == "secret")["text"] == SECRET

    # Audit records and pools are per namespace/name, not per name.
    audited = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tars_agent.audit"]
    assert [(a["model"], a["capability"]) for a in audited] == [
        *[("team-b/kb", "knowledge.query")] * len(SPOOFS),
        ("team-b/kb", "knowledge.upsert"),
        ("team-a/kb", "knowledge.query"),
    ]
    pools = {str(key): loaded.pool for key, loaded in shared_agent.repository.models.items()}
    assert set(pools) == {"team-a/kb", "team-b/kb"} and pools["team-a/kb"] is not pools["team-b/kb"]
