"""``tarsctl knowledge export|import`` against both real stores: documents move between tenants and
backends intact and searchable; a bad line stops the import before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tars_agent.runtimes.knowledge import Document, KnowledgeBase
from tars_agent.runtimes.knowledge_store import open_store
from tars_agent.runtimes.minilm import MiniLMEmbedder
from tarsctl.main import main
from tests.knowledge.conftest import OpenStore


def store_args(backend: tuple[str, Path | None, str | None]) -> list[str]:
    name, state, _ = backend
    return ["--backend", name, *(["--state-dir", str(state)] if state else [])]


def test_export_then_import_into_another_tenant(
    embedder: MiniLMEmbedder,
    open_replica: OpenStore,
    backend: tuple[str, Path | None, str | None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if backend[2]:
        monkeypatch.setenv("TARS_KNOWLEDGE_DSN", backend[2])
    source = KnowledgeBase(embedder.embed, embedder.dimensions, open_replica())
    facts = [Document(f"d{i}", f"Fact {i}: shard {i} lives in zone {i % 3}.", {"n": i}) for i in range(70)]
    source.upsert("team-a/kb", facts)
    dump = tmp_path / "kb.jsonl"
    assert main(["knowledge", "export", "kb", "-n", "team-a", *store_args(backend), "-o", str(dump)]) == 0
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(lines) == 70 and {"id": "d7", "text": "Fact 7: shard 7 lives in zone 1.", "metadata": {"n": 7}} in lines

    # Into a fresh SQLite state directory, as another tenant (e.g. a renamed model).
    target = tmp_path / "other-node"
    assert main(["knowledge", "import", "kb2", "-n", "team-b", "--state-dir", str(target), str(dump)]) == 0
    moved = KnowledgeBase(embedder.embed, embedder.dimensions, open_store("sqlite", target, None))
    assert moved.load("team-b/kb2") == 70
    assert moved.query("team-b/kb2", "where does shard 7 live?", 1)[0].id == "d7"
    moved.close()
    source.close()


def test_a_bad_line_stops_the_import_before_anything_is_written(tmp_path: Path) -> None:
    dump = tmp_path / "bad.jsonl"
    dump.write_text(json.dumps({"id": "ok", "text": "fine"}) + "\n" + json.dumps({"id": "", "text": "x"}) + "\n")
    with pytest.raises(SystemExit, match="line 2"):
        main(["knowledge", "import", "kb", "--state-dir", str(tmp_path / "state"), str(dump)])
    assert open_store("sqlite", tmp_path / "state", None).documents("default/kb") == []
