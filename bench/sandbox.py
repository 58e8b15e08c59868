"""Sandbox benchmark: fresh-sandbox start latency, RSS per warm sandbox, HTTP invocations/s.

Run: ``python bench/sandbox.py [--seconds 5] [--concurrency 1 4 16 64]``. Uses the echo test guest
(built and compiled once, cached). HTTP load comes from a separate process; the agent runs as one
process, then as one process per core sharing the port (``--reuse-port``), side by side in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tars_agent.sandbox.base import GuestSource, Limits
from tars_agent.sandbox.wasmtime_backend import WasmtimeBackend
from tars_guests.build import build_guest
from tars_guests.testapps import ECHO_APP

MODEL_YAML = """\
apiVersion: tars.hyperlight.dev/v1alpha1
kind: TarsModel
metadata: {name: echo}
spec: {nodeRef: {name: bench}, kind: function, source: "builtin://echo"}
"""


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sandbox_numbers(samples: int) -> dict[str, float]:
    backend = WasmtimeBackend()
    guest = backend.prepare(GuestSource(build_guest(ECHO_APP)), lambda name, args: "{}", Limits())
    guest.instantiate().close()  # first instance pays one-off costs
    starts, calls = [], []
    for _ in range(samples):
        t0 = time.perf_counter()
        instance = guest.instantiate()
        t1 = time.perf_counter()
        instance.handle('{"x": 1}')
        calls.append(time.perf_counter() - t1)
        starts.append(t1 - t0)
    before = rss_mib()
    warm = [guest.instantiate() for _ in range(200)]
    idle = (rss_mib() - before) / len(warm)
    before_used = rss_mib()
    used = warm[:100]
    for inst in used:
        # Keep the store alive after the call to see what a used instance costs.
        inst._func(inst._store, '{"x": 1}')  # type: ignore[arg-type]
    used_cost = (rss_mib() - before_used) / len(used)
    backend.close()
    return {
        "start_p50_ms": statistics.median(starts) * 1000,
        "start_p99_ms": percentile(starts, 0.99) * 1000,
        "call_p50_ms": statistics.median(calls) * 1000,
        "idle_rss_mib": idle,
        "used_rss_mib": used_cost,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_agents(processes: int, port: int, model: Path, workers: int) -> list[subprocess.Popen[bytes]]:
    cmd = [
        sys.executable,
        "-c",
        "from tars_agent.main import main; main()",
        "--standalone",
        "--model",
        str(model),
        "--backend",
        "wasmtime",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--max-queue",
        "4096",
        "--log-level",
        "warning",
        "--reuse-port",
    ]
    procs = [subprocess.Popen(cmd) for _ in range(processes)]
    deadline = time.monotonic() + 120
    ready = 0
    # Every process must be ready; poll until as many distinct answers arrive as processes exist.
    while time.monotonic() < deadline and ready < processes * 4:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                ready += r.status == 200
        except OSError:
            time.sleep(0.3)
    time.sleep(1.0)
    return procs


async def _load(url: str, concurrency: int, seconds: float) -> tuple[int, int, list[float]]:
    import aiohttp

    body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]})
    ok = errors = 0
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal ok, errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    if resp.status == 200:
                        ok += 1
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, errors, latencies


def load_process(url: str, concurrency: int, seconds: float, out: multiprocessing.Queue) -> None:
    out.put(asyncio.run(_load(url, concurrency, seconds)))


def http_numbers(processes: int, levels: list[int], seconds: float) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "echo.yaml"
        model.write_text(MODEL_YAML)
        port = free_port()
        procs = start_agents(processes, port, model, workers=4)
        url = f"http://127.0.0.1:{port}/v2/models/echo/infer"
        rows = []
        try:
            for level in levels:
                queue: multiprocessing.Queue = multiprocessing.Queue()
                p = multiprocessing.Process(target=load_process, args=(url, level, seconds, queue))
                p.start()
                ok, errors, lat = queue.get()
                p.join()
                rows.append(
                    {
                        "concurrency": level,
                        "rps": ok / seconds,
                        "errors": errors,
                        "p50_ms": statistics.median(lat) * 1000 if lat else 0.0,
                        "p99_ms": percentile(lat, 0.99) * 1000 if lat else 0.0,
                    }
                )
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=30)
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    args = parser.parse_args()
    console = Console()
    cores = os.cpu_count() or 1

    s = sandbox_numbers(args.samples)
    table = Table(title=f"Fresh Wasmtime sandbox (echo guest, {args.samples} samples)")
    for col in ("start p50", "start p99", "call p50", "RSS / idle warm sandbox", "RSS / used sandbox"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{s['start_p50_ms']:.2f} ms",
        f"{s['start_p99_ms']:.2f} ms",
        f"{s['call_p50_ms']:.2f} ms",
        f"{s['idle_rss_mib']:.2f} MiB",
        f"{s['used_rss_mib']:.2f} MiB",
    )
    console.print(table)

    results = {n: http_numbers(n, args.concurrency, args.seconds) for n in sorted({1, cores})}
    table = Table(title=f"HTTP /v2/models/echo/infer, load from a separate process ({cores} cores)")
    table.add_column("concurrency", justify="right")
    for n in results:
        table.add_column(f"{n} agent proc: req/s", justify="right")
        table.add_column("p50 / p99 ms", justify="right")
    if len(results) > 1:
        table.add_column("ratio", justify="right")
    for i, level in enumerate(args.concurrency):
        row = [str(level)]
        for n_rows in results.values():
            r = n_rows[i]
            errors = f" ({r['errors']} err)" if r["errors"] else ""
            row += [f"{r['rps']:.0f}{errors}", f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}"]
        if len(results) > 1:
            first, last = next(iter(results.values()))[i], list(results.values())[-1][i]
            row.append(f"{last['rps'] / max(first['rps'], 1e-9):.2f}x")
        table.add_row(*row)
    console.print(table)
    console.print("The load generator shares the cores with the agents, so multi-process numbers are a floor.")


if __name__ == "__main__":
    main()
