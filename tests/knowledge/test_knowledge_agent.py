"""The knowledge-query function on a real standalone tars-agent, on both backends: an acknowledged
upsert survives SIGKILL and is cited right after the restarted agent reports ready; with PostgreSQL
down, writes get 503 with Retry-After (nothing written) and queries answer from the cache."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures import eventually
from tests.knowledge.agents import KB_MODEL, AgentProcess, call, cited
from tests.postgres import PostgresServer

FACT = {"id": "rota", "text": "The on-call rota for the payments team is kept in the vault."}
QUESTION = "Where is the payments on-call rota kept?"


def standalone(tmp_path: Path, backend: str, state: Path | None, dsn: str | None) -> AgentProcess:
    model = tmp_path / "kb.yaml"
    model.write_text(yaml.safe_dump(KB_MODEL))
    args = ["--standalone", "--model", str(model), "--knowledge-backend", backend]
    args += ["--state-dir", str(state)] if state is not None else []
    env = {"TARS_KNOWLEDGE_DSN": dsn} if dsn else {}
    return AgentProcess(args, env, tmp_path / "agent.log")


def test_acknowledged_upsert_survives_sigkill_and_is_loaded_before_ready(
    tmp_path: Path, backend: tuple[str, Path | None, str | None]
) -> None:
    agent = standalone(tmp_path, *backend).start()
    try:
        agent.wait_ready()
        status, answer, _ = call(agent.url, {"question": QUESTION, "documents": [FACT]})
        assert status == 200 and answer["documents_added"] == 1, answer
        agent.kill()  # right after the acknowledgement
        agent.start().wait_ready()
        # No waiting beyond readiness: the restarted agent loaded the tenant before it said ready.
        assert "rota" in cited(agent.url, QUESTION)
    finally:
        agent.stop()


def test_postgres_down_refuses_writes_with_503_and_answers_stale_reads(tmp_path: Path) -> None:
    server = PostgresServer().init().start()
    agent = None
    try:
        server.psql("CREATE ROLE tars_agent LOGIN PASSWORD 'agent-secret' NOSUPERUSER NOBYPASSRLS")
        server.psql("CREATE DATABASE tars OWNER tars_agent")
        agent = standalone(tmp_path, "postgres", None, server.dsn()).start()
        agent.wait_ready()
        assert call(agent.url, {"question": QUESTION, "documents": [FACT]})[0] == 200
        server.stop(signal.SIGKILL)

        status, answer, headers = call(agent.url, {"question": QUESTION, "documents": [{"id": "new", "text": "x y"}]})
        assert status == 503, answer
        assert int(headers["Retry-After"]) >= 1 and "nothing was written" in answer["error"]

        # Reads still answer, from this agent's cache, and say so.
        def stale_answer() -> dict[str, Any]:
            status, answer, _ = call(agent.url, {"question": QUESTION})
            return answer if status == 200 and answer["stale"] else {}

        answer = eventually(stale_answer, 20, "a stale-marked answer")
        assert [c["id"] for c in answer["citations"]] == ["rota"]

        server.start()
        status, answer, _ = call(agent.url, {"question": "anything new?", "documents": [{"id": "new", "text": "z"}]})
        assert status == 200 and not answer["stale"], answer
        assert {"rota", "new"} <= cited(agent.url, QUESTION + " anything new?")
    finally:
        if agent is not None:
            agent.stop()
        server.destroy()
