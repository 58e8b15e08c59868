"""Image benchmark: the size of the image `make images` built, and how fast each builtin model loads
from the guests and compiled code baked into it.

    python bench/images.py            # the image's files in the page cache (a node's later loads)
    python bench/images.py --cold     # page cache dropped before each model: a fresh node (root)

Each model is loaded by a fresh Python process inside the image (``buildah run``, the image's own
user, environment and Python), through the agent's own repository and Wasmtime path (the native one
when the image carries it) as a placement would, with an empty writable cache: a fresh node. Any file
the load leaves in that cache was built on the node and fails the goal. Load time is the repository's
``load`` (guest lookup, compiled code, warm pool, MiniLM's weights for the embedding model);
interpreter start and imports are not counted, as an agent is already running when a model arrives.
Goal: every builtin model <= 180 ms.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
GOAL_MS = 180.0
# builtin name -> TarsModel kind.
MODELS = {
    "echo": "function",
    "sentiment-vader": "sentiment",
    "all-minilm-l6-v2": "embedding",
    "tars-reasoning": "reasoning",
    "autonomous-reasoning": "reasoning",
    "self-healing": "function",
    "knowledge-query": "function",
    "agent-coordination": "function",
}

CHILD = """
import asyncio, json, os, sys, time
from pathlib import Path
from tars_agent.agent import Agent, AgentConfig
from tars_agent.sandbox.probe import wasmtime_backend
from tars_api import TarsModel

name, kind = sys.argv[1], sys.argv[2]
model = TarsModel.model_validate({"metadata": {"name": "m", "namespace": "default"},
    "spec": {"nodeRef": {"name": "bench"}, "kind": kind, "source": "builtin://" + name}})
agent = Agent(AgentConfig(warm_pool_size=2), wasmtime_backend())
loop = asyncio.new_event_loop()
started = time.perf_counter()
loop.run_until_complete(agent.repository.load(model))
load_ms = (time.perf_counter() - started) * 1000
cache = Path(os.environ["TARS_CACHE_DIR"])
# Whatever the load left in the empty cache was made on the node: guests, compiled code, model graphs.
built = [str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()]
agent.close()
print(json.dumps({"model": name, "load_ms": round(load_ms, 1), "built_on_node": built}))
"""


def images_script(*args: str) -> str:
    return subprocess.run(
        ["bash", str(ROOT / "hack/images.sh"), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def buildah(*args: str) -> str:
    result = subprocess.run(["bash", str(ROOT / "hack/images.sh"), "buildah", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"buildah {args[0]} failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip()


def drop_page_cache() -> None:
    """Nothing of the image in memory: what a node that has just pulled it reads from disk."""
    subprocess.run(["sh", "-c", "sync && echo 3 > /proc/sys/vm/drop_caches"], check=True)


def load_in_image(container: str, name: str, kind: str, cold: bool) -> dict[str, Any]:
    if cold:
        drop_page_cache()
    # A fresh, empty tmpfs cache per model: nothing left by the previous model's load.
    output = buildah(
        "run",
        "--isolation",
        "chroot",
        "--mount",
        "type=tmpfs,destination=/var/cache/tars",
        container,
        "--",
        "python",
        "-c",
        CHILD,
        name,
        kind,
    )
    return dict(json.loads(output.splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each model (root)")
    cold = parser.parse_args().cold
    archive = Path(images_script("archive"))
    record = json.loads(archive.with_name(archive.name.replace(".oci.tar", ".json")).read_text())
    container = buildah("from", "--pull-never", record["reference"])
    try:
        results = [load_in_image(container, name, kind, cold) for name, kind in MODELS.items()]
    finally:
        buildah("rm", container)
    table = Table(
        title=f"{record['reference']}: {record['imageBytes'] / 2**20:.0f} MiB "
        f"({record['archiveBytes'] / 2**20:.0f} MiB compressed)"
    )
    for column in ("builtin model", f"load ms ({'cold' if cold else 'warm'} page cache)", "built on the node"):
        table.add_column(column)
    for r in results:
        table.add_row(r["model"], f"{r['load_ms']:.0f}", ", ".join(r["built_on_node"]) or "nothing")
    console = Console()
    console.print(table)
    worst = max(r["load_ms"] for r in results)
    met = worst <= GOAL_MS and not any(r["built_on_node"] for r in results)
    console.print(
        f"goal: every builtin model <= {GOAL_MS:.0f} ms, nothing built -> worst {worst:.0f} ms: "
        f"{'met' if met else 'NOT met'}"
    )
    print(
        json.dumps(
            {
                "bench": "images",
                "reference": record["reference"],
                "image_bytes": record["imageBytes"],
                "archive_bytes": record["archiveBytes"],
                "build_seconds": record["buildSeconds"],
                "page_cache": "cold" if cold else "warm",
                "load_ms": {r["model"]: r["load_ms"] for r in results},
                "goal_ms": GOAL_MS,
                "goal_met": met,
            }
        )
    )
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
