"""Durable stores behind the knowledge capabilities: SQLite on the node, or PostgreSQL for fleets.

Both keep the same two tables, every row keyed by tenant (``namespace/name`` of a TarsModel):

- ``tars_knowledge_tenants``: one row per tenant: ``incarnation`` (random, new each time the tenant is
  created, so a cache never mistakes a re-created tenant for the old one), ``version`` (bumped by
  every write), and the lifecycle marks ``retain`` and ``orphaned_at``;
- ``tars_knowledge_documents``: one row per document with its embedding (float32 bytes, so replicas
  never re-embed), the tenant ``version`` that wrote it, and a ``deleted`` flag (a tombstone, so a
  cache can catch up with deletions incrementally).

A write commits (durably: SQLite WAL with synchronous=FULL; PostgreSQL's fsync'd WAL) before it
returns, and all of it or none of it. Readers catch up with :meth:`DocumentStore.changes`. On
PostgreSQL, tenants are kept apart by the database itself: row-level security (forced, so it binds
the tables' owner too) admits only rows of the tenant named in the transaction's ``tars.tenant``
setting. The agent's role must therefore not be a superuser or have BYPASSRLS.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

RETRY_AFTER_S = 5
SQLITE_FILE = "knowledge.sqlite3"


class KnowledgeError(ValueError):
    """Bad documents or query; the message names the field."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


class StoreUnavailable(Exception):
    """The database cannot be reached or did not commit; nothing was written. Retry later."""

    retry_after_s = RETRY_AFTER_S


@dataclass(frozen=True)
class StoredDocument:
    document: Document
    vector: np.ndarray


@dataclass
class Changes:
    """What a cache at (incarnation, version) lacks: ``reset`` means drop what it holds first."""

    incarnation: int
    version: int
    reset: bool
    upserted: list[StoredDocument] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


class DocumentStore(Protocol):
    durable: bool
    description: str

    def upsert(
        self, tenant: str, documents: Sequence[Document], vectors: np.ndarray, limit: int, retain: bool = False
    ) -> int: ...
    def delete(self, tenant: str, ids: Sequence[str]) -> int: ...
    def changes(self, tenant: str, incarnation: int, since: int) -> Changes: ...
    def versions(self, tenants: Sequence[str]) -> dict[str, tuple[int, int]]: ...
    def documents(self, tenant: str) -> list[Document]: ...
    def drop_tenant(self, tenant: str) -> None: ...
    def reconcile_namespace(
        self, namespace: str, present: dict[str, bool], grace_s: float, now: float
    ) -> list[str]: ...
    def close(self) -> None: ...


def _vector_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def _row_document(doc_id: str, text: str, metadata: str, blob: bytes) -> StoredDocument:
    return StoredDocument(Document(doc_id, text, json.loads(metadata)), np.frombuffer(blob, dtype="<f4").copy())


def namespace_of(tenant: str) -> str:
    return tenant.split("/", 1)[0]


class _SqlStore:
    """The SQL both backends share; subclasses give a transaction (cursor) scoped to one tenant
    (or a namespace, for lifecycle) and their parameter style."""

    durable = True
    description = ""
    _p = "?"  # the driver's placeholder; the SQL below is written with "?"

    def _tx(self, tenant: str | None = None, namespace: str | None = None) -> Any:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        return sql.replace("?", self._p)

    def _bump(self, cur: Any, tenant: str, retain: bool = False) -> tuple[int, int]:
        """Creates the tenant or bumps its version; (incarnation, new version). A new tenant takes its
        model's ``retain`` at once: a model written to and deleted between two lifecycle passes is
        never seen with its tenant by any pass, and would otherwise be dropped despite retain. An
        existing tenant's retain is the lifecycle pass's to change (it reads the TarsModels)."""
        cur.execute(
            self._q(
                "INSERT INTO tars_knowledge_tenants (tenant, incarnation, version, retain) VALUES (?, ?, 1, ?) "
                "ON CONFLICT (tenant) DO UPDATE SET version = tars_knowledge_tenants.version + 1 "
                "RETURNING incarnation, version"
            ),
            (tenant, secrets.randbits(62), retain),
        )
        incarnation, version = cur.fetchone()
        return int(incarnation), int(version)

    def upsert(
        self, tenant: str, documents: Sequence[Document], vectors: np.ndarray, limit: int, retain: bool = False
    ) -> int:
        with self._tx(tenant) as cur:
            _, version = self._bump(cur, tenant, retain)
            ids = list(dict.fromkeys(d.id for d in documents))
            marks = ",".join("?" * len(ids))
            cur.execute(
                self._q(
                    "SELECT count(*) FROM tars_knowledge_documents WHERE tenant = ? AND deleted = ? "
                    f"AND id NOT IN ({marks})"
                ),
                (tenant, False, *ids),
            )
            if int(cur.fetchone()[0]) + len(ids) > limit:
                raise KnowledgeError(f"documents: the store of {tenant} would exceed {limit}")
            cur.executemany(
                self._q(
                    "INSERT INTO tars_knowledge_documents (tenant, id, text, metadata, vector, version, deleted) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, id) DO UPDATE SET text = excluded.text, "
                    "metadata = excluded.metadata, vector = excluded.vector, version = excluded.version, "
                    "deleted = excluded.deleted"
                ),
                [
                    (tenant, d.id, d.text, json.dumps(d.metadata), _vector_bytes(v), version, False)
                    for d, v in zip(documents, vectors, strict=True)
                ],
            )
            return version

    def delete(self, tenant: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self._tx(tenant) as cur:
            _, version = self._bump(cur, tenant)
            marks = ",".join("?" * len(ids))
            cur.execute(
                self._q(
                    "UPDATE tars_knowledge_documents SET deleted = ?, text = '', metadata = '{}', vector = ?, "
                    f"version = ? WHERE tenant = ? AND deleted = ? AND id IN ({marks})"
                ),
                (True, b"", version, tenant, False, *ids),
            )
            return int(cur.rowcount)

    def changes(self, tenant: str, incarnation: int, since: int) -> Changes:
        with self._tx(tenant) as cur:
            cur.execute(self._q("SELECT incarnation, version FROM tars_knowledge_tenants WHERE tenant = ?"), (tenant,))
            row = cur.fetchone()
            if row is None:
                return Changes(0, 0, reset=since > 0 or incarnation != 0)
            current, version = int(row[0]), int(row[1])
            reset = current != incarnation
            after = 0 if reset else since
            cur.execute(
                self._q(
                    "SELECT id, text, metadata, vector, deleted FROM tars_knowledge_documents "
                    "WHERE tenant = ? AND version > ? ORDER BY version, id"
                ),
                (tenant, after),
            )
            changes = Changes(current, version, reset)
            for doc_id, text, metadata, blob, deleted in cur.fetchall():
                if deleted:
                    changes.deleted.append(doc_id)
                else:
                    changes.upserted.append(_row_document(doc_id, text, metadata, bytes(blob)))
            return changes

    def versions(self, tenants: Sequence[str]) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        for tenant in tenants:
            with self._tx(tenant) as cur:
                cur.execute(
                    self._q("SELECT incarnation, version FROM tars_knowledge_tenants WHERE tenant = ?"), (tenant,)
                )
                row = cur.fetchone()
                found[tenant] = (int(row[0]), int(row[1])) if row else (0, 0)
        return found

    def documents(self, tenant: str) -> list[Document]:
        return [stored.document for stored in self.changes(tenant, -1, 0).upserted]

    def drop_tenant(self, tenant: str) -> None:
        with self._tx(tenant) as cur:
            cur.execute(self._q("DELETE FROM tars_knowledge_documents WHERE tenant = ?"), (tenant,))
            cur.execute(self._q("DELETE FROM tars_knowledge_tenants WHERE tenant = ?"), (tenant,))

    def reconcile_namespace(self, namespace: str, present: dict[str, bool], grace_s: float, now: float) -> list[str]:
        """Lifecycle of the tenants of one namespace, given the TarsModels that exist there now
        (name -> spec.knowledge.retain): a tenant whose model is gone is marked orphaned, one whose
        model is back is unmarked, and one orphaned longer than ``grace_s`` without retain is
        dropped. Returns the tenants dropped."""
        with self._tx(namespace=namespace) as cur:
            cur.execute(
                self._q("SELECT tenant, orphaned_at, retain FROM tars_knowledge_tenants WHERE tenant LIKE ?"),
                (namespace + "/%",),
            )
            rows = [(t, o, bool(r)) for t, o, r in cur.fetchall() if namespace_of(t) == namespace]
            expired = []
            for tenant, orphaned_at, retain in rows:
                name = tenant.split("/", 1)[1]
                if name in present:
                    if orphaned_at is not None or retain != present[name]:
                        cur.execute(
                            self._q(
                                "UPDATE tars_knowledge_tenants SET orphaned_at = NULL, retain = ? WHERE tenant = ?"
                            ),
                            (present[name], tenant),
                        )
                elif orphaned_at is None:
                    cur.execute(
                        self._q("UPDATE tars_knowledge_tenants SET orphaned_at = ? WHERE tenant = ?"), (now, tenant)
                    )
                elif not retain and now - float(orphaned_at) >= grace_s:
                    expired.append(tenant)
        for tenant in expired:
            self.drop_tenant(tenant)
        return expired


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS tars_knowledge_tenants (
    tenant TEXT PRIMARY KEY, incarnation INTEGER NOT NULL, version INTEGER NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0, orphaned_at REAL);
CREATE TABLE IF NOT EXISTS tars_knowledge_documents (
    tenant TEXT NOT NULL, id TEXT NOT NULL, text TEXT NOT NULL, metadata TEXT NOT NULL, vector BLOB NOT NULL,
    version INTEGER NOT NULL, deleted INTEGER NOT NULL, PRIMARY KEY (tenant, id));
CREATE INDEX IF NOT EXISTS tars_knowledge_documents_version ON tars_knowledge_documents (tenant, version);
"""


class SqliteStore(_SqlStore):
    """One file in the agent's state directory (``:memory:`` when there is none: not durable).

    WAL with synchronous=FULL: a commit is on disk before upsert returns; agent processes of one
    node can share the file (WAL allows readers beside one writer; busy_timeout queues writers)."""

    def __init__(self, path: Path | str, busy_timeout_s: float = 5.0) -> None:
        self.durable = str(path) != ":memory:"
        self.description = f"sqlite {path}"
        if self.durable:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=busy_timeout_s)
        if self.durable:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SQLITE_SCHEMA)

    @contextmanager
    def _tx(self, tenant: str | None = None, namespace: str | None = None) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                yield cur
                cur.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._rollback()
                raise StoreUnavailable(f"knowledge store {self.description}: {exc}") from exc
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            self._db.close()


# Row-level security: a transaction sees only the tenant its tars.tenant setting names (documents),
# or, for lifecycle, the tenants of the namespace its tars.namespace names (the tenants table only).
_POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS tars_knowledge_tenants (
    tenant TEXT PRIMARY KEY, incarnation BIGINT NOT NULL, version BIGINT NOT NULL,
    retain BOOLEAN NOT NULL DEFAULT false, orphaned_at DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS tars_knowledge_documents (
    tenant TEXT NOT NULL, id TEXT NOT NULL, text TEXT NOT NULL, metadata TEXT NOT NULL, vector BYTEA NOT NULL,
    version BIGINT NOT NULL, deleted BOOLEAN NOT NULL, PRIMARY KEY (tenant, id));
CREATE INDEX IF NOT EXISTS tars_knowledge_documents_version ON tars_knowledge_documents (tenant, version);
ALTER TABLE tars_knowledge_tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tars_knowledge_tenants FORCE ROW LEVEL SECURITY;
ALTER TABLE tars_knowledge_documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE tars_knowledge_documents FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tars_tenant ON tars_knowledge_tenants;
CREATE POLICY tars_tenant ON tars_knowledge_tenants USING (
    tenant = current_setting('tars.tenant', true)
    OR split_part(tenant, '/', 1) = current_setting('tars.namespace', true));
DROP POLICY IF EXISTS tars_tenant ON tars_knowledge_documents;
CREATE POLICY tars_tenant ON tars_knowledge_documents USING (tenant = current_setting('tars.tenant', true));
"""


class PostgresStore(_SqlStore):
    """A PostgreSQL database named by a DSN; one connection per store, reconnected after a failure."""

    _p = "%s"

    def __init__(self, dsn: str, connect_timeout_s: int = 3) -> None:
        import psycopg

        self._psycopg = psycopg
        self._dsn = dsn
        self._timeout = connect_timeout_s
        self.description = "postgresql " + _redacted(dsn)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._schema_ready = False  # connects lazily: an agent starts (and serves other models) while it is down

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._psycopg.connect(self._dsn, connect_timeout=self._timeout, autocommit=True)
        if not self._schema_ready:
            with self._conn.transaction(), self._conn.cursor() as cur:
                # Two agents starting together must not race on CREATE TABLE IF NOT EXISTS.
                cur.execute("SELECT pg_advisory_xact_lock(7325001)")
                cur.execute(_POSTGRES_SCHEMA)
            self._schema_ready = True
        return self._conn

    @contextmanager
    def _tx(self, tenant: str | None = None, namespace: str | None = None) -> Iterator[Any]:
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cur:
                    if tenant is not None:
                        cur.execute("SELECT set_config('tars.tenant', %s, true)", (tenant,))
                    if namespace is not None:
                        cur.execute("SELECT set_config('tars.namespace', %s, true)", (namespace,))
                    yield cur
            except self._psycopg.OperationalError as exc:
                self._drop_connection()
                raise StoreUnavailable(f"knowledge store {self.description}: {str(exc).strip()[:300]}") from exc

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop_connection()


def _redacted(dsn: str) -> str:
    """The DSN without its password, for logs."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "(unparsable DSN)"
    parts.pop("password", None)
    return make_conninfo("", **{k: v for k, v in parts.items() if v is not None})


def open_store(backend: str, state_dir: Path | None, dsn: str | None) -> DocumentStore:
    """The store an agent's configuration names: ``postgres`` needs ``dsn``; ``sqlite`` uses
    ``state_dir`` (in memory, not durable, without one)."""
    if backend == "postgres":
        if not dsn:
            raise ValueError("the postgres knowledge backend needs a DSN (TARS_KNOWLEDGE_DSN)")
        return PostgresStore(dsn)
    if backend != "sqlite":
        raise ValueError(f"unknown knowledge backend {backend!r}: sqlite or postgres")
    return SqliteStore(state_dir / SQLITE_FILE if state_dir is not None else ":memory:")
