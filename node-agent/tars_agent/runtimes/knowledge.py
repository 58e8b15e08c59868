"""Per-tenant vector stores: documents embedded with MiniLM, cosine top-k in numpy over a cache.

A tenant is one TarsModel (``namespace/name``). Every operation takes the tenant explicitly, so a
query can only ever scan the caller's documents. The documents live in a durable store
(:mod:`tars_agent.runtimes.knowledge_store`: SQLite on the node or PostgreSQL for fleets); each
agent keeps a per-tenant matrix in memory, kept in step with the store:

- an upsert commits to the store before it returns (and is applied to this agent's cache at once);
- a background poller asks the store for the versions of the cached tenants every
  ``sync_interval_s`` and fetches only what changed, so a write on another replica is seen here
  within that interval plus one fetch;
- with the store unreachable, queries answer from the cache and :meth:`KnowledgeBase.stale` says
  it may be stale; writes raise :class:`StoreUnavailable` (nothing written).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tars_agent.runtimes.knowledge_store import (
    Changes,
    Document,
    DocumentStore,
    KnowledgeError,
    SqliteStore,
    StoreUnavailable,
)

__all__ = ["Document", "Hit", "KnowledgeBase", "KnowledgeError", "StoreUnavailable", "validate_document"]

log = logging.getLogger(__name__)

Embed = Callable[[Sequence[str]], np.ndarray]

MAX_DOCUMENT_CHARS = 20000
MAX_DOCUMENTS_PER_TENANT = 10000
MAX_TOP_K = 50
SYNC_INTERVAL_S = 0.5
_DOCUMENT_SUFFIXES = {".txt", ".md"}


@dataclass(frozen=True)
class Hit:
    id: str
    text: str
    score: float
    metadata: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "score": self.score, "metadata": self.metadata}


def validate_document(raw: Any, index: int) -> Document:
    where = f"documents[{index}]"
    if not isinstance(raw, dict):
        raise KnowledgeError(f"{where}: must be an object with id and text")
    doc_id, text, meta = raw.get("id"), raw.get("text"), raw.get("metadata", {})
    if not isinstance(doc_id, str) or not doc_id or len(doc_id) > 200:
        raise KnowledgeError(f"{where}.id: must be a string of 1 to 200 characters")
    if not isinstance(text, str) or not text.strip():
        raise KnowledgeError(f"{where}.text: must be a non-empty string")
    if len(text) > MAX_DOCUMENT_CHARS:
        raise KnowledgeError(f"{where}.text: is {len(text)} characters; the limit is {MAX_DOCUMENT_CHARS}")
    if not isinstance(meta, dict):
        raise KnowledgeError(f"{where}.metadata: must be an object")
    return Document(doc_id, text, dict(meta))


class VectorStore:
    """One tenant's documents and their unit-length embeddings (rows of ``matrix``)."""

    def __init__(self, dimensions: int) -> None:
        self.documents: list[Document] = []
        self.matrix = np.zeros((0, dimensions), dtype=np.float32)
        self._index: dict[str, int] = {}
        # Where this cache stands in the store: the tenant's incarnation and version it reflects.
        self.incarnation = 0
        self.version = 0

    def __len__(self) -> int:
        return len(self.documents)

    def apply(self, changes: Changes) -> None:
        """Brings the cache up to ``changes`` (read from the store)."""
        if changes.reset:
            self.documents, self._index = [], {}
            self.matrix = self.matrix[:0]
        if changes.deleted:
            self.delete(changes.deleted)
        if changes.upserted:
            self.upsert([c.document for c in changes.upserted], np.asarray([c.vector for c in changes.upserted]))
        self.incarnation, self.version = changes.incarnation, changes.version

    def upsert(self, documents: Sequence[Document], vectors: np.ndarray) -> None:
        """Adds documents, replacing any with the same id."""
        new_rows: list[np.ndarray] = []
        for doc, vector in zip(documents, vectors, strict=True):
            row = self._index.get(doc.id)
            if row is not None:
                self.documents[row] = doc
                self.matrix[row] = vector
                continue
            self._index[doc.id] = len(self.documents)
            self.documents.append(doc)
            new_rows.append(vector)
        if new_rows:
            self.matrix = np.vstack([self.matrix, np.asarray(new_rows, dtype=np.float32)])

    def delete(self, ids: Iterable[str]) -> int:
        drop = {self._index[i] for i in ids if i in self._index}
        if not drop:
            return 0
        keep = [r for r in range(len(self.documents)) if r not in drop]
        self.documents = [self.documents[r] for r in keep]
        self.matrix = self.matrix[keep]
        self._index = {doc.id: r for r, doc in enumerate(self.documents)}
        return len(drop)

    def top_k(self, query: np.ndarray, k: int) -> list[Hit]:
        if not self.documents:
            return []
        scores = self.matrix @ query  # rows and query are unit length: dot product is cosine
        k = min(k, len(scores))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [
            Hit(self.documents[r].id, self.documents[r].text, float(scores[r]), self.documents[r].metadata)
            for r in best
        ]


class KnowledgeBase:
    """Tenants' documents in a durable store, searched over per-tenant caches; thread-safe (guests
    call from several worker threads)."""

    def __init__(
        self,
        embed: Embed,
        dimensions: int,
        store: DocumentStore | None = None,
        sync_interval_s: float = SYNC_INTERVAL_S,
    ) -> None:
        self._embed = embed
        self._dimensions = dimensions
        self.store: DocumentStore = store if store is not None else SqliteStore(":memory:")
        self.sync_interval_s = sync_interval_s
        self._caches: dict[str, VectorStore] = {}
        self._stale: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def tenants(self) -> list[str]:
        with self._lock:
            return sorted(t for t, cache in self._caches.items() if len(cache))

    def size(self, tenant: str) -> int:
        with self._lock:
            cache = self._caches.get(tenant)
            return len(cache) if cache else 0

    def stale(self, tenant: str) -> bool:
        """True while the store could not be read: answers come from what the cache last saw."""
        with self._lock:
            return tenant in self._stale

    # --- keeping caches in step with the store -------------------------------------------------
    def sync(self, tenant: str) -> None:
        """Fetches what the store holds for ``tenant`` beyond this cache; raises StoreUnavailable."""
        for _ in range(3):
            with self._lock:
                cache = self._caches.setdefault(tenant, VectorStore(self._dimensions))
                incarnation, version = cache.incarnation, cache.version
            try:
                changes = self.store.changes(tenant, incarnation, version)
            except StoreUnavailable:
                with self._lock:
                    self._stale.add(tenant)
                raise
            with self._lock:
                # Another thread applied a read meanwhile: read again from where it left the cache.
                applied = (cache.incarnation, cache.version) == (incarnation, version)
                if applied:
                    cache.apply(changes)
                    self._stale.discard(tenant)
            if applied:
                break
        self._start_poller()

    def load(self, tenant: str) -> int:
        """Loads a tenant's documents before its model is reported ready; raises StoreUnavailable."""
        self.sync(tenant)
        return self.size(tenant)

    def poll_once(self) -> None:
        """One pass of the poller: re-syncs the cached tenants whose store version moved."""
        with self._lock:
            known = {t: (c.incarnation, c.version) for t, c in self._caches.items()}
        if not known:
            return
        try:
            current = self.store.versions(list(known))
        except StoreUnavailable as exc:
            with self._lock:
                newly = set(known) - self._stale
                self._stale |= set(known)
            if newly:
                log.warning("knowledge store unreachable, answering from the cache: %s", exc)
            return
        for tenant, seen in known.items():
            if current.get(tenant) != seen or self.stale(tenant):
                try:
                    self.sync(tenant)
                except StoreUnavailable:
                    return

    def _start_poller(self) -> None:
        with self._lock:
            if self._poller is not None or self._stop.is_set():
                return
            self._poller = threading.Thread(target=self._poll_forever, name="knowledge-sync", daemon=True)
        self._poller.start()

    def _poll_forever(self) -> None:
        while not self._stop.wait(self.sync_interval_s):
            try:
                self.poll_once()
            except Exception:  # the poller must outlive any one bad pass
                log.exception("knowledge store sync failed")

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        self.store.close()

    def _cached(self, tenant: str) -> VectorStore | None:
        """The tenant's cache, read from the store the first time it is asked for."""
        with self._lock:
            cache = self._caches.get(tenant)
        if cache is None:
            # Unreachable: an empty answer, and stale() tells the caller.
            with contextlib.suppress(StoreUnavailable):
                self.sync(tenant)
            with self._lock:
                cache = self._caches.get(tenant)
        return cache

    # --- the capabilities ----------------------------------------------------------------------
    def upsert(self, tenant: str, documents: Sequence[Document], retain: bool = False) -> int:
        """Durable in the store before it returns; StoreUnavailable (nothing written) otherwise.
        ``retain``: the model's spec.knowledge.retain, taken by the tenant if this creates it."""
        if not documents:
            return 0
        # Embedding is the slow part: do it outside any lock, before touching the store.
        vectors = self._embed([doc.text for doc in documents])
        self.store.upsert(tenant, documents, vectors, MAX_DOCUMENTS_PER_TENANT, retain)
        with contextlib.suppress(StoreUnavailable):  # committed; else the poller catches the cache up
            self.sync(tenant)
        return len(documents)

    def delete(self, tenant: str, ids: Iterable[str]) -> int:
        removed = self.store.delete(tenant, list(ids))
        with contextlib.suppress(StoreUnavailable):
            self.sync(tenant)
        return removed

    def drop_tenant(self, tenant: str) -> None:
        self.store.drop_tenant(tenant)
        with self._lock:
            self._caches.pop(tenant, None)
            self._stale.discard(tenant)

    def reconcile_namespace(self, namespace: str, present: dict[str, bool], grace_s: float, now: float) -> list[str]:
        """The store's lifecycle pass (see DocumentStore.reconcile_namespace); drops dropped caches."""
        dropped = self.store.reconcile_namespace(namespace, present, grace_s, now)
        with self._lock:
            for tenant in dropped:
                self._caches.pop(tenant, None)
        return dropped

    def query(self, tenant: str, text: str, k: int = 3) -> list[Hit]:
        if not isinstance(text, str) or not text.strip():
            raise KnowledgeError("query: must be a non-empty string")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_TOP_K:
            raise KnowledgeError(f"top_k: must be an integer between 1 and {MAX_TOP_K}")
        cache = self._cached(tenant)
        with self._lock:
            if cache is None or not len(cache):
                return []
        vector = self._embed([text])[0]
        with self._lock:
            return cache.top_k(vector, k)

    def load_directory(self, tenant: str, directory: Path, retain: bool = False) -> int:
        """Adds every .txt/.md file (id: its relative path) and every .json file holding a list of
        {id, text, metadata?} objects under ``directory``."""
        documents: list[Document] = []
        for path in sorted(Path(directory).rglob("*")):
            if not path.is_file():
                continue
            if path.suffix in _DOCUMENT_SUFFIXES:
                text = path.read_text(encoding="utf-8", errors="replace")
                if text.strip():
                    documents.append(Document(path.relative_to(directory).as_posix(), text[:MAX_DOCUMENT_CHARS]))
            elif path.suffix == ".json":
                items = json.loads(path.read_text())
                if not isinstance(items, list):
                    raise KnowledgeError(f"{path}: must hold a list of documents")
                documents += [validate_document(item, i) for i, item in enumerate(items)]
        return self.upsert(tenant, documents, retain)
