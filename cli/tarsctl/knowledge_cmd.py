"""``tarsctl knowledge export|import``: a tenant's (TarsModel's) knowledge documents as JSON lines.

The store is read directly, as the agents do: ``--backend postgres`` with the DSN in
TARS_KNOWLEDGE_DSN (the TarsNode's Secret; never on the command line), or ``--backend sqlite
--state-dir DIR`` (the node's spec.knowledge.stateHostPath, or a copy of it). Each line is
``{"id", "text", "metadata"}``; import embeds the texts with the agents' MiniLM and writes in batches,
each batch whole or not at all, replacing documents of the same id.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from tars_agent.runtimes.knowledge import MAX_DOCUMENTS_PER_TENANT, Document, validate_document
from tars_agent.runtimes.knowledge_store import DocumentStore, open_store

BATCH = 64


def export_lines(store: DocumentStore, tenant: str) -> Iterator[str]:
    for doc in sorted(store.documents(tenant), key=lambda d: d.id):
        yield json.dumps({"id": doc.id, "text": doc.text, "metadata": doc.metadata}, ensure_ascii=False)


def read_documents(lines: Iterable[str]) -> list[Document]:
    """Validated documents; a bad line stops the import before anything is written, naming the line."""
    documents = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            documents.append(validate_document(json.loads(line), number))
        except ValueError as exc:  # also json.JSONDecodeError and KnowledgeError
            raise SystemExit(f"line {number}: {exc}") from None
    return documents


def import_documents(
    store: DocumentStore, tenant: str, documents: Sequence[Document], embed: Callable[[Sequence[str]], np.ndarray]
) -> int:
    for start in range(0, len(documents), BATCH):
        batch = documents[start : start + BATCH]
        store.upsert(tenant, batch, embed([d.text for d in batch]), MAX_DOCUMENTS_PER_TENANT)
    return len(documents)


def _store(args: argparse.Namespace) -> DocumentStore:
    if args.backend == "sqlite" and args.state_dir is None:
        raise SystemExit("--backend sqlite needs --state-dir (the node's spec.knowledge.stateHostPath)")
    return open_store(args.backend, args.state_dir, os.environ.get("TARS_KNOWLEDGE_DSN"))


def _export(args: argparse.Namespace) -> int:
    store = _store(args)
    out: IO[str] = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        count = 0
        for line in export_lines(store, f"{args.namespace}/{args.model}"):
            out.write(line + "\n")
            count += 1
    finally:
        if args.output:
            out.close()
        store.close()
    print(f"exported {count} documents of {args.namespace}/{args.model}", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    from tars_agent.runtimes.services import shared_embedder

    source: IO[str] = open(args.input, encoding="utf-8") if args.input != "-" else sys.stdin  # noqa: SIM115
    with source:
        documents = read_documents(source)
    store = _store(args)
    try:
        count = import_documents(store, f"{args.namespace}/{args.model}", documents, shared_embedder().embed)
    finally:
        store.close()
    print(f"imported {count} documents into {args.namespace}/{args.model}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("knowledge", help="export or import a TarsModel's knowledge documents")
    commands = parser.add_subparsers(dest="knowledge_command", required=True)
    for name, run, help_text in (
        ("export", _export, "write the model's documents as JSON lines"),
        ("import", _import, "add JSON-lines documents to the model's store (same id: replaced)"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("model", help="TarsModel name")
        sub.add_argument("-n", "--namespace", default="default", help="TarsModel namespace")
        sub.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
        sub.add_argument("--state-dir", type=Path, help="sqlite: the directory holding knowledge.sqlite3")
        if name == "export":
            sub.add_argument("-o", "--output", help="file to write (default: stdout)")
        else:
            sub.add_argument("input", help="JSON-lines file, or - for stdin")
        sub.set_defaults(func=run)
