"""`tarsctl crds generate|check`: keep crds/ equal to what the API models say."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from tars_api.crd import render_crds

console = Console()


def stale_files(directory: Path) -> list[str]:
    """Names of files in ``directory`` that differ from (or are missing for) the generated CRDs."""
    return [
        name
        for name, text in render_crds().items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]


def generate(directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_crds().items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(name)
    return written


def _run(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if args.action == "check":
        stale = stale_files(directory)
        if stale:
            console.print(f"[red]stale CRDs in {directory}: {', '.join(stale)}; run `tarsctl crds generate`")
            return 1
        console.print(f"[green]{directory} is up to date")
        return 0
    written = generate(directory)
    console.print(f"wrote {len(written)} file(s) to {directory}" + (f": {', '.join(written)}" if written else ""))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("crds", help="generate or check crds/ from the API models")
    parser.add_argument("action", choices=["generate", "check"])
    parser.add_argument("--dir", default="crds", help="output directory (default: crds)")
    parser.set_defaults(func=_run)
