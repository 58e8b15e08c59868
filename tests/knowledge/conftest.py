"""Both knowledge backends, for real: a SQLite file in a temporary state directory, and a PostgreSQL
server (Debian's, started once per session) with a fresh database per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tars_agent.runtimes.knowledge_store import DocumentStore, open_store
from tars_agent.runtimes.minilm import MiniLMEmbedder
from tars_agent.runtimes.services import shared_embedder
from tests.postgres import postgres_dsn, postgres_server  # noqa: F401 (fixtures)

OpenStore = Callable[[], DocumentStore]


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    return shared_embedder()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path | None, str | None]:
    """(backend, state_dir, dsn): what an agent's configuration names."""
    if request.param == "postgres":
        return "postgres", None, request.getfixturevalue("postgres_dsn")
    return "sqlite", tmp_path / "state", None


@pytest.fixture
def open_replica(backend: tuple[str, Path | None, str | None]) -> Iterator[OpenStore]:
    """Opens another connection to the same store: another replica, or the agent after a restart."""
    opened: list[DocumentStore] = []

    def open_one() -> DocumentStore:
        opened.append(open_store(*backend))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()
