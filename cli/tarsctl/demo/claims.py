"""What the original TARS project claimed: its published figures, transcribed from original_claims.md.

They are claims, not measurements made here. The report shows them beside our measurements, labelled
as the original's, with the ratio; no calculation uses them. tests/demo checks this transcription
against the Markdown file, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent / "original_claims.md"


@dataclass(frozen=True)
class Claim:
    name: str  # the original's row label
    parameters: str
    memory_mb: float
    latency_ms: float
    rps: float
    use_case: str

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "source": "the original TARS project's claim (original_claims.md)"}


MODELS: dict[str, Claim] = {
    c.name: c
    for c in (
        Claim("Edge Tiny", "10M", 64, 28, 42, "IoT / edge"),
        Claim("GPT-2 Small", "124M", 512, 75, 28, "real-time chat"),
        Claim("Sentence-BERT", "384 dims", 256, 22, 85, "semantic search"),
        Claim("Sentiment Analysis", "50K vocab", 128, 12, 165, "high-volume classification"),
        Claim("TARS Reasoning", "custom", 1536, 285, 6, "complex decision making"),
    )
}
AVERAGE_LOAD_MS = 356.0
TOTAL_MEMORY_MB = 2496.0
NODE_RPS = 10_000.0


def claim(name: str | None) -> Claim | None:
    """The original's row called ``name``; a name it does not have is an error (a typo in a plan)."""
    if name is None:
        return None
    if name not in MODELS:
        raise ValueError(f"the original claimed nothing for {name!r}; its rows are {', '.join(MODELS)}")
    return MODELS[name]


def parse_table(markdown: str) -> list[Claim]:
    """The model rows of the first Markdown table whose header starts with ``model`` (for the test)."""
    rows: list[Claim] = []
    in_table = False
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| model"):
            in_table = True
        elif in_table and line.startswith("|") and not set(cells[0]) <= {"-"}:
            name, params, memory, latency, rps, use = cells
            rows.append(Claim(name, params, _number(memory, "MB"), _number(latency, "ms"), _number(rps, "RPS"), use))
        elif in_table and not line.startswith("|"):
            break
    return rows


def _number(cell: str, unit: str) -> float:
    if not cell.endswith(f" {unit}"):
        raise ValueError(f"expected a figure in {unit}: {cell!r}")
    return float(cell.removesuffix(f" {unit}").replace(",", ""))
