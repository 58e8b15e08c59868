"""Per-tenant vector stores with real MiniLM embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tars_agent.runtimes.knowledge import Document, KnowledgeBase, KnowledgeError, validate_document
from tars_agent.runtimes.minilm import MiniLMEmbedder

DOCS = [
    Document("kubelet", "The kubelet restarts containers that crash, following the pod's restart policy."),
    Document("hpa", "The horizontal pod autoscaler adds replicas when CPU utilisation is above target."),
    Document("pasta", "Cook the pasta in salted boiling water for nine minutes."),
    Document("lease", "A node-agent renews its Lease every few seconds; an expired Lease means the node is lost."),
]


@pytest.fixture
def knowledge(embedder: MiniLMEmbedder) -> KnowledgeBase:
    base = KnowledgeBase(embedder.embed, embedder.dimensions)
    base.upsert("team-a/kb", DOCS)
    return base


def test_top_k_returns_the_most_relevant_documents_in_order(knowledge: KnowledgeBase) -> None:
    hits = knowledge.query("team-a/kb", "How do I get more replicas under load?", k=2)
    assert hits[0].id == "hpa"
    assert len(hits) == 2 and hits[0].score >= hits[1].score
    assert knowledge.query("team-a/kb", "what happens when a node disappears", k=1)[0].id == "lease"
    assert len(knowledge.query("team-a/kb", "anything", k=50)) == len(DOCS)


def test_tenants_never_see_each_others_documents(knowledge: KnowledgeBase) -> None:
    knowledge.upsert("team-b/kb", [Document("secret", "Team B's incident runbook for the payment service.")])
    assert {h.id for h in knowledge.query("team-a/kb", "payment service incident runbook", k=10)} == {
        d.id for d in DOCS
    }
    assert [h.id for h in knowledge.query("team-b/kb", "restart crashing containers", k=10)] == ["secret"]
    assert knowledge.query("team-c/kb", "anything", k=3) == []


def test_upsert_replaces_and_delete_removes(knowledge: KnowledgeBase) -> None:
    knowledge.upsert("team-a/kb", [Document("pasta", "Node drains evict pods before maintenance.")])
    assert knowledge.size("team-a/kb") == len(DOCS)
    assert knowledge.query("team-a/kb", "evict pods before maintenance", k=1)[0].id == "pasta"
    assert knowledge.delete("team-a/kb", ["pasta", "missing"]) == 1
    assert "pasta" not in {h.id for h in knowledge.query("team-a/kb", "cooking", k=10)}


def test_load_directory(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "disk.md").write_text("When a disk fills up, rotate logs and expand the volume.")
    (tmp_path / "more.json").write_text(json.dumps([{"id": "dns", "text": "DNS failures: check CoreDNS pods."}]))
    base = KnowledgeBase(embedder.embed, embedder.dimensions)
    assert base.load_directory("ns/m", tmp_path) == 2
    assert base.query("ns/m", "the disk is full", k=1)[0].id == "runbooks/disk.md"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("text", "documents[0]"),
        ({"text": "x"}, "documents[0].id"),
        ({"id": "a", "text": ""}, "documents[0].text"),
        ({"id": "a", "text": "x" * 20001}, "documents[0].text"),
        ({"id": "a", "text": "x", "metadata": []}, "documents[0].metadata"),
    ],
)
def test_bad_documents_name_the_field(raw: object, field: str) -> None:
    with pytest.raises(KnowledgeError, match=field.replace("[", r"\[").replace("]", r"\]")):
        validate_document(raw, 0)


def test_bad_queries_name_the_field(knowledge: KnowledgeBase) -> None:
    with pytest.raises(KnowledgeError, match="query"):
        knowledge.query("team-a/kb", "  ")
    with pytest.raises(KnowledgeError, match="top_k"):
        knowledge.query("team-a/kb", "x", k=0)
