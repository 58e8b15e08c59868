"""report/: report.json (every measured number), report.md, and report.html with embedded plots.

The Markdown and HTML render the tables of :mod:`tarsctl.demo.tables`, built from the same dict that
is written to report.json (the console shows the same tables), so the documents cannot show a
figure the data does not hold.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from tarsctl.demo.tables import fmt, sections


def clean(value: Any) -> Any:
    """JSON-safe: NaN and infinity become null (JSON has neither)."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(data: dict[str, Any]) -> str:
    parts = [
        "# TARS demo report",
        "",
        f"Run finished {data['meta']['finished_at']} in {data['total_s']:.0f} s "
        f"on {data['meta']['machine_vcpus']} vCPUs. Every figure below was measured in this run.",
        "",
    ]
    for section in sections(data):
        parts += [f"## {section.title}", "", _md_table(section.header, section.rows), ""]
        parts += [f"- {n}" for n in section.notes]
        parts.append("")
    return "\n".join(parts)


def plots(data: dict[str, Any]) -> dict[str, str]:
    """name -> PNG as base64; empty when matplotlib is not installed (the tables still carry the data)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    out: dict[str, str] = {}

    def save(name: str, fig: Any) -> None:
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        out[name] = base64.b64encode(buffer.getvalue()).decode()

    bench = [b for b in data["benchmark"] if b["latencies_ms"]]
    if bench:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.boxplot([b["latencies_ms"] for b in bench], showfliers=True)
        ax.set_xticks(range(1, len(bench) + 1), [b["model"] for b in bench])
        ax.set_yscale("log")
        ax.set_ylabel("latency ms (log)")
        ax.set_title("latency distribution through the gateway")
        save("latency", fig)
        save("throughput", _throughput(plt, bench, {r["model"]: r for r in data.get("baseline") or []}))
    mem = [
        r
        for r in data["load"]["models"]
        if r["rss_per_replica_mib"] is not None and not math.isnan(r["rss_per_replica_mib"])
    ]
    if mem:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        x = range(len(mem))
        ax.bar([i - 0.2 for i in x], [r["rss_per_replica_mib"] for r in mem], width=0.4, label="measured RSS")
        ax.bar([i + 0.2 for i in x], [r["declared_mib"] for r in mem], width=0.4, label="declared memoryMiB")
        ax.set_xticks(list(x), [r["model"] for r in mem])
        ax.set_ylabel("MiB per replica")
        ax.legend()
        ax.set_title("memory per model")
        save("memory", fig)
    starts = {m: s for m, s in (data.get("sandbox_start") or {}).items() if s["count"]}
    if starts:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for model, s in sorted(starts.items()):
            edges = sorted((float(le), c) for le, c in s["buckets"].items() if le != "+Inf")
            ax.plot([e * 1000 for e, _ in edges], [c / s["count"] for _, c in edges], marker="o", label=model)
        ax.set_xscale("log")
        ax.set_xlabel("sandbox start ms (bucket bound)")
        ax.set_ylabel("share started within")
        ax.legend(fontsize="small")
        ax.set_title("sandbox start times (cumulative)")
        save("sandbox_start", fig)
    return out


def _throughput(plt: Any, bench: list[dict[str, Any]], alone: dict[str, dict[str, Any]]) -> Any:
    """Saturated req/s per model: TARS through the gateway, the model alone, the original's claim."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = range(len(bench))
    alone_rps = [alone[b["model"]]["saturation"]["rps"] if b["model"] in alone else 0 for b in bench]
    series = [
        ("TARS, saturated (measured)", "tab:green", [b["saturation"]["rps"] for b in bench]),
        ("alone in its own agent (measured)", "tab:blue", alone_rps),
        ("original's claim", "tab:gray", [(b.get("claim") or {}).get("rps", 0) for b in bench]),
    ]
    for i, (label, color, values) in enumerate(series):
        ax.bar([j + (i - 1) * 0.27 for j in x], values, width=0.27, label=label, color=color)
    ax.set_xticks(list(x), [b["model"] for b in bench])
    ax.set_yscale("log")
    ax.set_ylabel("requests/s (log)")
    ax.legend(fontsize="small")
    ax.set_title("throughput at saturation")
    return fig


def html_report(data: dict[str, Any], images: dict[str, str]) -> str:
    e = html.escape
    body = [
        f"<h1>TARS demo report</h1><p>Run finished {e(data['meta']['finished_at'])} in {data['total_s']:.0f} s "
        f"on {data['meta']['machine_vcpus']} vCPUs. Every figure was measured in this run.</p>"
    ]
    for name in ("latency", "throughput", "memory", "sandbox_start"):
        if name in images:
            body.append(f'<img alt="{name}" src="data:image/png;base64,{images[name]}">')
    if not images:
        body.append("<p>(matplotlib is not installed: no plots; the tables hold the same data)</p>")
    for section in sections(data):
        body.append(f"<h2>{e(section.title)}</h2><table><tr>{''.join(f'<th>{e(h)}</th>' for h in section.header)}</tr>")
        body += ["<tr>" + "".join(f"<td>{e(fmt(c))}</td>" for c in row) + "</tr>" for row in section.rows]
        body.append("</table>")
        body += [f"<p class=note>{e(n)}</p>" for n in section.notes]
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}img{max-width:100%}.note{color:#555}"
    )
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>TARS demo report</title><style>{style}</style>"
        f"</head><body>{''.join(body)}</body></html>"
    )


def write(directory: Path, data: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    safe = clean(data)
    (directory / "report.json").write_text(json.dumps(safe, indent=2))
    (directory / "report.md").write_text(markdown(safe))
    (directory / "report.html").write_text(html_report(safe, plots(safe)))
    return directory
