"""Durable knowledge stores, on SQLite and on PostgreSQL: acknowledged writes survive the writer's
SIGKILL, every replica sees them, an unreachable store refuses writes whole and answers queries from
the cache marked stale, tenants are apart in the database itself, and deleted models' documents go
after the grace period unless retained."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tars_agent.runtimes.knowledge import MAX_DOCUMENTS_PER_TENANT, Document, KnowledgeBase, KnowledgeError
from tars_agent.runtimes.knowledge_store import SQLITE_FILE, SqliteStore, StoreUnavailable, open_store
from tars_agent.runtimes.minilm import MiniLMEmbedder
from tests.fixtures import REPO, eventually
from tests.knowledge.conftest import OpenStore
from tests.postgres import PostgresServer

TENANT = "team-a/kb"
DOCS = [
    Document("lease", "An agent renews its Lease every few seconds; a lapsed Lease means the node is lost."),
    Document("scale", "The autoscaler adds replicas when requests in flight exceed the target."),
]


def knowledge(embedder: MiniLMEmbedder, open_replica: OpenStore, interval: float = 0.05) -> KnowledgeBase:
    return KnowledgeBase(embedder.embed, embedder.dimensions, open_replica(), sync_interval_s=interval)


def test_a_write_on_one_replica_is_seen_by_another(embedder: MiniLMEmbedder, open_replica: OpenStore) -> None:
    one, two = knowledge(embedder, open_replica), knowledge(embedder, open_replica)
    assert two.query(TENANT, "lost node", 1) == []  # cached (empty) before the write
    one.upsert(TENANT, DOCS)
    eventually(lambda: two.size(TENANT) == 2, 10, "the other replica's cache to catch up")
    assert two.query(TENANT, "what happens when a node disappears", 1)[0].id == "lease"
    one.delete(TENANT, ["lease"])
    eventually(lambda: two.size(TENANT) == 1, 10, "the deletion to reach the other replica")
    assert [h.id for h in two.query(TENANT, "node lost", 5)] == ["scale"]
    one.close()
    two.close()


def test_a_store_over_the_limit_is_refused_whole(embedder: MiniLMEmbedder, open_replica: OpenStore) -> None:
    store = open_replica()
    vectors = np.zeros((MAX_DOCUMENTS_PER_TENANT, 4), dtype=np.float32)
    docs = [Document(f"d{i}", "x") for i in range(MAX_DOCUMENTS_PER_TENANT)]
    store.upsert(TENANT, docs, vectors, MAX_DOCUMENTS_PER_TENANT)
    with pytest.raises(KnowledgeError, match="would exceed"):
        store.upsert(TENANT, [Document("d0", "again"), Document("more", "y")], vectors[:2], MAX_DOCUMENTS_PER_TENANT)
    # Nothing of the refused batch was written: d0 still holds its old text.
    held = {d.id: d.text for d in store.documents(TENANT)}
    assert len(held) == MAX_DOCUMENTS_PER_TENANT and held["d0"] == "x" and "more" not in held


WRITER = """
import sys
from pathlib import Path
from tars_agent.runtimes.knowledge import Document, KnowledgeBase
from tars_agent.runtimes.knowledge_store import open_store
from tars_agent.runtimes.services import shared_embedder
backend, state, dsn = sys.argv[1], sys.argv[2] or None, sys.argv[3] or None
embedder = shared_embedder()
store = open_store(backend, Path(state) if state else None, dsn)
base = KnowledgeBase(embedder.embed, embedder.dimensions, store)
for i in range(1000):
    base.upsert("team-a/kb", [Document(f"doc-{i}", f"Acknowledged fact number {i}.")])
    print(f"ack {i}", flush=True)
"""


def test_an_acknowledged_upsert_survives_sigkill(
    embedder: MiniLMEmbedder, open_replica: OpenStore, backend: tuple[str, Path | None, str | None]
) -> None:
    name, state, dsn = backend
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, name, str(state or ""), dsn or ""],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("api", "common", "node-agent"))},
    )
    assert writer.stdout is not None
    acked = -1
    for line in writer.stdout:
        acked = int(line.split()[1])
        if acked >= 5:
            writer.send_signal(signal.SIGKILL)  # right after the acknowledgement, mid-stream
            break
    writer.wait(timeout=60)
    assert acked >= 5, "the writer never acknowledged"
    reloaded = knowledge(embedder, open_replica)
    assert reloaded.load(TENANT) >= acked + 1
    ids = {d.id for d in reloaded.store.documents(TENANT)}
    assert {f"doc-{i}" for i in range(acked + 1)} <= ids
    reloaded.close()


def test_sqlite_is_durable_on_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / SQLITE_FILE)
    db = sqlite3.connect(tmp_path / SQLITE_FILE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsync before COMMIT returns
    store.close()


def test_sqlite_locked_refuses_writes_and_serves_stale_reads(embedder: MiniLMEmbedder, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / SQLITE_FILE, busy_timeout_s=0.2)
    base = KnowledgeBase(embedder.embed, embedder.dimensions, store, sync_interval_s=0.05)
    base.upsert(TENANT, DOCS)
    # Another process holds the write lock for longer than the store waits: the store is unusable.
    holder = sqlite3.connect(tmp_path / SQLITE_FILE, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreUnavailable):
        base.upsert(TENANT, [Document("new", "written while the store was locked")])
    eventually(lambda: base.stale(TENANT), 10, "queries to be marked stale")
    assert base.query(TENANT, "node lost", 1)[0].id == "lease"
    holder.execute("ROLLBACK")
    eventually(lambda: not base.stale(TENANT), 10, "the stale mark to clear")
    assert "new" not in {d.id for d in store.documents(TENANT)}
    base.close()


def test_postgres_unreachable_refuses_writes_and_serves_stale_reads(embedder: MiniLMEmbedder, tmp_path: Path) -> None:
    server = PostgresServer().init().start()  # its own server: this test kills it
    try:
        server.psql("CREATE ROLE tars_agent LOGIN PASSWORD 'agent-secret' NOSUPERUSER NOBYPASSRLS")
        server.psql("CREATE DATABASE tars OWNER tars_agent")
        base = KnowledgeBase(embedder.embed, embedder.dimensions, open_store("postgres", None, server.dsn()), 0.05)
        base.upsert(TENANT, DOCS)
        server.stop(signal.SIGKILL)  # the database host dies
        with pytest.raises(StoreUnavailable):
            base.upsert(TENANT, [Document("new", "written while the database was down")])
        eventually(lambda: base.stale(TENANT), 10, "queries to be marked stale")
        assert base.query(TENANT, "what happens when a node disappears", 1)[0].id == "lease"
        server.start()
        eventually(lambda: not base.stale(TENANT), 20, "the stale mark to clear")
        assert {d.id for d in base.store.documents(TENANT)} == {"lease", "scale"}  # nothing half-written
        base.upsert(TENANT, [Document("new", "written after the database came back")])
        assert base.size(TENANT) == 3
        base.close()
    finally:
        server.destroy()


def test_postgres_keeps_tenants_apart_in_the_database(embedder: MiniLMEmbedder, postgres_dsn: str) -> None:
    import psycopg

    base = KnowledgeBase(embedder.embed, embedder.dimensions, open_store("postgres", None, postgres_dsn))
    base.upsert(TENANT, DOCS)
    base.upsert("team-b/kb", [Document("theirs", "Team B's document.")])
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        # The agent's own role, with no tenant named: row-level security shows nothing at all.
        assert conn.execute("SELECT count(*) FROM tars_knowledge_documents").fetchone() == (0,)
        conn.execute("SELECT set_config('tars.tenant', 'team-b/kb', false)")
        rows = conn.execute("SELECT tenant, id FROM tars_knowledge_documents").fetchall()
        assert rows == [("team-b/kb", "theirs")]
        # Nor can team B's transaction write into team A's rows.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO tars_knowledge_documents VALUES ('team-a/kb', 'x', 'planted', '{}', '', 1, false)"
            )
    base.close()


def test_lifecycle_deletes_after_the_grace_period_unless_retained(
    embedder: MiniLMEmbedder, open_replica: OpenStore
) -> None:
    base = knowledge(embedder, open_replica)
    for name in ("kept", "gone", "back"):
        base.upsert(f"team-a/{name}", DOCS[:1])
    now = time.time()
    present = {"kept": True, "gone": False, "back": False}
    assert base.reconcile_namespace("team-a", present, 60, now) == []
    # All three models deleted: marked, nothing dropped before the grace period.
    assert base.reconcile_namespace("team-a", {}, 60, now) == []
    assert base.reconcile_namespace("team-a", {}, 60, now + 30) == []
    # "back" is re-created within the grace period: its mark is cleared.
    assert base.reconcile_namespace("team-a", {"back": False}, 60, now + 40) == []
    assert base.reconcile_namespace("team-a", {"back": False}, 60, now + 61) == ["team-a/gone"]
    assert base.store.documents("team-a/gone") == [] and base.size("team-a/gone") == 0
    assert [d.id for d in base.store.documents("team-a/kept")] == ["lease"]  # retain: true
    assert [d.id for d in base.store.documents("team-a/back")] == ["lease"]
    # Another namespace's tenants are never judged by this namespace's listing.
    base.upsert("team-b/other", DOCS[:1])
    assert base.reconcile_namespace("team-a", {}, 0, now + 1000) == []  # seen gone once: marked
    assert base.reconcile_namespace("team-a", {}, 0, now + 1000) == ["team-a/back"]
    assert [d.id for d in base.store.documents("team-b/other")] == ["lease"]
    base.close()


def test_a_recreated_tenant_replaces_what_caches_hold(embedder: MiniLMEmbedder, open_replica: OpenStore) -> None:
    one, two = knowledge(embedder, open_replica), knowledge(embedder, open_replica)
    assert two.load(TENANT) == 0  # as an agent does when it loads the model
    one.upsert(TENANT, DOCS)
    eventually(lambda: two.size(TENANT) == 2, 10, "the other replica to catch up")
    one.drop_tenant(TENANT)
    one.upsert(TENANT, [Document("fresh", "A new model of the same name starts empty.")])
    eventually(lambda: json.dumps([h.id for h in two.query(TENANT, "new model", 5)]) == '["fresh"]', 10, "reset")
    one.close()
    two.close()


def test_an_agent_starts_while_postgres_is_down(tmp_path: Path) -> None:
    """The store connects lazily: the agent serves its other models; knowledge calls wait for it."""
    from tars_agent.agent import Agent, AgentConfig
    from tars_agent.sandbox.wasmtime_backend import WasmtimeBackend
    from tests.postgres import free_port

    dsn = f"postgresql://tars_agent:x@127.0.0.1:{free_port()}/tars"  # nothing listens there
    agent = Agent(AgentConfig(knowledge_backend="postgres", knowledge_dsn=dsn), WasmtimeBackend(), "test")
    try:
        assert agent.services.knowledge_store is not None
        with pytest.raises(StoreUnavailable):
            agent.services.knowledge_store.upsert(TENANT, DOCS[:1], np.zeros((1, 4), np.float32), 10)
    finally:
        agent.close()


@pytest.mark.parametrize("retain", [True, False], ids=["retained", "not-retained"])
async def test_a_tenant_written_and_deleted_between_lifecycle_passes_keeps_its_models_retain(
    backend: tuple[str, Path | None, str | None], open_replica: OpenStore, retain: bool
) -> None:
    """Regression: retain reached a tenant only when the sync's lifecycle pass saw the TarsModel and
    its tenant together. A model whose first upsert came after one pass and which was deleted before
    the next had a tenant with retain false, and its documents were dropped despite retain."""
    from tars_agent.agent import Agent, AgentConfig
    from tars_agent.capabilities import CallContext, ModelKey
    from tars_agent.sandbox.wasmtime_backend import WasmtimeBackend
    from tars_api import TarsModel
    from tests.knowledge.agents import KB_MODEL

    name, state, dsn = backend
    agent = Agent(AgentConfig(knowledge_backend=name, state_dir=state, knowledge_dsn=dsn), WasmtimeBackend(), "test")
    spec = {**KB_MODEL["spec"], "knowledge": {"retain": retain}}  # type: ignore[dict-item]
    model = TarsModel.model_validate({**KB_MODEL, "metadata": {"name": "kb", "namespace": "team-a"}, "spec": spec})
    store = open_replica()  # what any replica (or the next agent) finds in the store
    try:
        assert await agent.ensure_loaded(model), agent.repository.failed
        documents = [{"id": d.id, "text": d.text} for d in DOCS]
        # The guest's knowledge.upsert, the first write of the tenant, after the last lifecycle pass.
        assert agent.services.knowledge_upsert(CallContext(ModelKey("team-a", "kb")), {"documents": documents})
        # The model is deleted before the next pass: the passes never see it. Grace 0: the first pass
        # starts the orphan clock, the second drops the tenant unless it is retained.
        assert agent.services.reconcile_knowledge("team-a", {}, 0) == []
        dropped = agent.services.reconcile_knowledge("team-a", {}, 0)
        held = sorted(d.id for d in store.documents("team-a/kb"))
        if retain:
            assert (dropped, held) == ([], ["lease", "scale"])
            # A later change of retain still arrives through the pass: re-created without retain and
            # deleted again, the tenant goes.
            assert agent.services.reconcile_knowledge("team-a", {"kb": False}, 0) == []
            assert agent.services.reconcile_knowledge("team-a", {}, 0) == []
            assert agent.services.reconcile_knowledge("team-a", {}, 0) == ["team-a/kb"]
            assert store.documents("team-a/kb") == []
        else:
            assert (dropped, held) == (["team-a/kb"], [])
    finally:
        agent.close()
