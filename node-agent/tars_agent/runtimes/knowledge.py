"""Per-tenant vector stores: documents embedded with MiniLM, cosine top-k in numpy.

A tenant is one TarsModel (``namespace/name``). Each tenant has its own store object and matrix, and
every operation takes the tenant explicitly, so a query can only ever scan the caller's documents.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Embed = Callable[[Sequence[str]], np.ndarray]

MAX_DOCUMENT_CHARS = 20000
MAX_DOCUMENTS_PER_TENANT = 10000
MAX_TOP_K = 50
_DOCUMENT_SUFFIXES = {".txt", ".md"}


class KnowledgeError(ValueError):
    """Bad documents or query; the message names the field."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


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

    def __len__(self) -> int:
        return len(self.documents)

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
    """Vector stores keyed by tenant; thread-safe (guests call from several worker threads)."""

    def __init__(self, embed: Embed, dimensions: int) -> None:
        self._embed = embed
        self._dimensions = dimensions
        self._stores: dict[str, VectorStore] = {}
        self._lock = threading.Lock()

    def tenants(self) -> list[str]:
        with self._lock:
            return sorted(self._stores)

    def size(self, tenant: str) -> int:
        with self._lock:
            store = self._stores.get(tenant)
            return len(store) if store else 0

    def upsert(self, tenant: str, documents: Sequence[Document]) -> int:
        if not documents:
            return 0
        # Embedding is the slow part: do it outside the lock.
        vectors = self._embed([doc.text for doc in documents])
        with self._lock:
            store = self._stores.setdefault(tenant, VectorStore(self._dimensions))
            new = len({d.id for d in documents} - {d.id for d in store.documents})
            if len(store) + new > MAX_DOCUMENTS_PER_TENANT:
                raise KnowledgeError(f"documents: the store of {tenant} would exceed {MAX_DOCUMENTS_PER_TENANT}")
            store.upsert(documents, vectors)
        return len(documents)

    def delete(self, tenant: str, ids: Iterable[str]) -> int:
        with self._lock:
            store = self._stores.get(tenant)
            return store.delete(ids) if store else 0

    def drop_tenant(self, tenant: str) -> None:
        with self._lock:
            self._stores.pop(tenant, None)

    def query(self, tenant: str, text: str, k: int = 3) -> list[Hit]:
        if not isinstance(text, str) or not text.strip():
            raise KnowledgeError("query: must be a non-empty string")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_TOP_K:
            raise KnowledgeError(f"top_k: must be an integer between 1 and {MAX_TOP_K}")
        with self._lock:
            store = self._stores.get(tenant)
            if store is None or not len(store):
                return []
        vector = self._embed([text])[0]
        with self._lock:
            return store.top_k(vector, k)

    def load_directory(self, tenant: str, directory: Path) -> int:
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
        return self.upsert(tenant, documents)
