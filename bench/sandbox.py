"""Sandbox benchmark: both Wasmtime paths and a reference Rust host, side by side in one run.

Run: ``python bench/sandbox.py [--samples 500] [--slots 1000] [--seconds 4] [--concurrency 1 64]``.

1. Fresh sandbox start and call of a trivial function in each of the four languages of users'
   functions (:func:`bench_guests`: the greeter examples in Python, JavaScript and C, Rust's textstats
   example; then the VADER guests), on the wasmtime-py path and the native path (``tars_native``).
   ``--start-only`` runs this part alone.
2. Idle memory of ``--slots`` warm (started, unused) sandboxes of the compiled guest, per path.
3. HTTP: the compiled function invoked over HTTP with a fresh sandbox per request, served by the agent
   on each path (one process, then one per core sharing the port), by the agent with its native HTTP
   front (``--native-http``: hyper in tars_native serves the route, Python decides access) and by the
   reference host
   (``tars-refhost``: hyper + the same Wasmtime engine settings, no Python). Load comes from a
   separate process (wrk when installed, else aiohttp) on the same cores, so figures are a floor.
   ``--http-only`` runs this part alone.
4. Sentiment over HTTP (issue 18's goal: p50 <= 1 ms at the agent, >= 3,000 req/s per node):
   ``builtin://sentiment-vader`` (the compiled VADER guest) on the agent, one process per core, beside
   the componentize-py VADER guest served the same way and the reference host running the compiled one.
   ``--sentiment-only`` runs this part alone.

Figures are printed with the issue-18 goals beside them, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tars_agent.sandbox.base import GuestSource, HostCallRefused, Limits, SandboxBackend
from tars_agent.sandbox.probe import wasmtime_backend
from tars_guests.apps import build_app
from tars_guests.compiled import build_compiled

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("TARS_CACHE_DIR", Path.home() / ".cache" / "tars"))
REFHOST = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "cargo-target-native")) / "release" / "tars-refhost"
PATHS = ("python", "native")
# The compiled function's input; every server gets the same body.
FUNCTION_INPUT = json.dumps({"text": "hello world, hello sandbox"})
GOALS = {"rps": 10_000, "p50_ms": 5.0, "p99_ms": 20.0, "vs_reference": 1.5}
SENTIMENT_INPUT = json.dumps({"text": "The new release is great, but the docs are not!"})
# p50 at one connection (what one caller meets at the agent); req/s at 64 connections (saturation).
SENTIMENT_GOALS = {"p50_ms": 1.0, "rps": 3_000}

MODEL_YAML = """\
apiVersion: tars.hyperlight.dev/v1alpha1
kind: TarsModel
metadata: {{name: fn}}
spec: {{nodeRef: {{name: bench}}, kind: {kind}, source: "{source}"}}
"""
NODE_YAML = """\
apiVersion: tars.hyperlight.dev/v1alpha1
kind: TarsNode
metadata: {{name: bench}}
spec: {{modelRoots: ["{root}"]}}
"""


def compiled_guest() -> Path:
    """The Rust example function (guests/examples/rust), built once into the shared cargo cache."""
    out = CACHE / "bench"
    built = subprocess.run(
        ["bash", str(ROOT / "guests/examples/build.sh"), str(out)], capture_output=True, text=True, check=True
    )
    return Path(built.stdout.strip().splitlines()[-1])


def c_guest() -> Path:
    """The C example function (guests/examples/c), built by its script (clang, wit-bindgen c)."""
    out = CACHE / "bench"
    built = subprocess.run(
        ["bash", str(ROOT / "guests/examples/c/build.sh"), str(out)], capture_output=True, text=True, check=True
    )
    return Path(built.stdout.strip().splitlines()[-1])


def python_guest() -> Path:
    """The Python example function (guests/examples/python), built as the agent builds users' Python."""
    from tars_agent.functions import python_function_bundle

    source = (ROOT / "guests/examples/python/greeter.py").read_text()
    component = python_function_bundle(source, "greeter.py").guest.component
    assert component is not None
    return component


def js_guest() -> Path:
    """The JavaScript example function (guests/examples/js), built by componentize-js (cached by content)."""
    from tars_guests.jsbuild import build_js

    return build_js((ROOT / "guests/examples/js/greeter.js").read_text())


def bench_guests() -> dict[str, tuple[Path, str]]:
    """Guests measured for start and call: label -> (component, input). One row per guest and path."""
    greeter_input = json.dumps({"name": "bench", "lang": "fr"})
    return {
        "python greeter (componentize-py)": (python_guest(), greeter_input),
        "rust textstats (compiled)": (compiled_guest(), FUNCTION_INPUT),
        "c greeter (clang, wit-bindgen c)": (c_guest(), greeter_input),
        "javascript greeter (componentize-js)": (js_guest(), greeter_input),
        "python VADER sentiment (componentize-py)": (build_app("sentiment"), SENTIMENT_INPUT),
        "rust VADER sentiment (compiled)": (build_compiled("vader"), SENTIMENT_INPUT),
    }


def refuse(name: str, _args: str) -> str:
    raise HostCallRefused(f"capability {name} is not allowed")


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_numbers(backend: SandboxBackend, component: Path, input_json: str, samples: int) -> dict[str, float]:
    guest = backend.prepare(GuestSource(component), refuse, Limits())
    guest.instantiate().handle(input_json)  # the first instance pays one-off costs
    starts, calls = [], []
    for _ in range(samples):
        t0 = time.perf_counter()
        instance = guest.instantiate()
        t1 = time.perf_counter()
        instance.handle(input_json)
        calls.append(time.perf_counter() - t1)
        starts.append(t1 - t0)
    return {
        "start_p50_ms": statistics.median(starts) * 1000,
        "start_p99_ms": percentile(starts, 0.99) * 1000,
        "call_p50_ms": statistics.median(calls) * 1000,
    }


def idle_slots(backend: SandboxBackend, component: Path, slots: int) -> dict[str, float]:
    """RSS of ``slots`` started, unused sandboxes (what a warm pool of that size holds)."""
    guest = backend.prepare(GuestSource(component), refuse, Limits())
    guest.instantiate().close()
    before = rss_mib()
    warm = [guest.instantiate() for _ in range(slots)]
    total = rss_mib() - before
    for instance in warm:
        instance.close()
    return {"slots": slots, "idle_total_mib": total, "idle_per_slot_kib": total * 1024 / slots}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, answers: int) -> None:
    deadline = time.monotonic() + 120
    ready = 0
    while time.monotonic() < deadline and ready < answers:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                ready += r.status == 200
        except OSError:
            time.sleep(0.3)
    if ready < answers:
        raise RuntimeError(f"{url} did not answer in time")
    time.sleep(1.0)


@contextmanager
def agents(
    path: str,
    processes: int,
    component: Path | None,
    source: str = "",
    kind: str = "function",
    native_http: bool = False,
) -> Iterator[str]:
    """``processes`` agents on one port (``--reuse-port``) serving ``component`` (or the model at
    ``source``, e.g. a builtin) as model ``fn``, with ``native_http`` behind the native front; yields
    its invoke URL."""
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "fn.yaml"
        model.write_text(MODEL_YAML.format(kind=kind, source=source or f"file://{component}"))
        port = free_port()
        cmd = [sys.executable, "-c", "from tars_agent.main import main; main()", "--standalone"]
        cmd += ["--model", str(model), "--backend", "wasmtime"]
        if component is not None:
            node = Path(tmp) / "node.yaml"
            node.write_text(NODE_YAML.format(root=component.parent))
            cmd += ["--node-config", str(node)]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--workers", "4", "--max-queue", "4096", "--log-level", "warning", "--reuse-port"]
        cmd += ["--native-http"] if native_http else []
        env = {**os.environ, "TARS_WASMTIME_PATH": path}
        procs = [subprocess.Popen(cmd, env=env) for _ in range(processes)]
        try:
            # Every process must be ready: poll until more answers arrive than processes exist.
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", processes * 4)
            url = f"http://127.0.0.1:{port}/v1/functions/fn:invoke"
            if native_http:  # the first answers come from Python, which teaches each process's front
                for _ in range(processes * 8):
                    urllib.request.urlopen(urllib.request.Request(url, data=FUNCTION_INPUT.encode()), timeout=10)
            yield url
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=30)


@contextmanager
def reference_host(component: Path, workers: int) -> Iterator[str]:
    if not REFHOST.is_file():
        raise SystemExit(f"{REFHOST} is missing: run hack/build-native.sh (make install) first")
    port = free_port()
    proc = subprocess.Popen([str(REFHOST), str(component), str(port), str(workers)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=FUNCTION_INPUT.encode())
                with urllib.request.urlopen(req, timeout=1):
                    break
            except OSError:
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
"""
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk_ms(text: str, label: str) -> float:
    match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def wrk_load(url: str, concurrency: int, seconds: float, body: str = FUNCTION_INPUT) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.format(body=body))
    try:
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency", "-s", script.name, url]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    ok = (int(total.group(1)) if total else 0) - errors
    return {"rps": ok / seconds, "errors": errors, "p50_ms": _wrk_ms(out, "50%"), "p99_ms": _wrk_ms(out, "99%")}


async def _aiohttp_load(url: str, concurrency: int, seconds: float, body: str) -> tuple[int, int, list[float]]:
    import aiohttp

    ok = errors = 0
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal ok, errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    if resp.status == 200:
                        ok += 1
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, errors, latencies


def _aiohttp_process(url: str, concurrency: int, seconds: float, body: str, out: multiprocessing.Queue) -> None:
    out.put(asyncio.run(_aiohttp_load(url, concurrency, seconds, body)))


def load(url: str, concurrency: int, seconds: float, body: str = FUNCTION_INPUT) -> dict[str, float]:
    """req/s and latency from a load generator in a separate process."""
    if shutil.which("wrk"):
        return wrk_load(url, concurrency, seconds, body)
    queue: multiprocessing.Queue = multiprocessing.Queue()
    p = multiprocessing.Process(target=_aiohttp_process, args=(url, concurrency, seconds, body, queue))
    p.start()
    ok, errors, lat = queue.get()
    p.join()
    return {
        "rps": ok / seconds,
        "errors": errors,
        "p50_ms": statistics.median(lat) * 1000 if lat else float("nan"),
        "p99_ms": percentile(lat, 0.99) * 1000 if lat else float("nan"),
    }


def http_numbers(component: Path, levels: list[int], seconds: float) -> dict[str, list[dict[str, float]]]:
    cores = os.cpu_count() or 1
    servers = {}
    for path in PATHS:
        for n in sorted({1, cores}):
            servers[f"agent, {path} path, {n} proc"] = lambda path=path, n=n: agents(path, n, component)
    for n in sorted({1, cores}):
        servers[f"agent, native HTTP front, {n} proc"] = lambda n=n: agents("native", n, component, native_http=True)
    servers[f"reference Rust host, {cores} workers"] = lambda: reference_host(component, cores)
    results = {}
    for name, server in servers.items():
        with server() as url:
            results[name] = [{"concurrency": level, **load(url, level, seconds)} for level in levels]
    return results


def servers_cpu_s() -> float:
    """User + system CPU seconds of this process's live children: the servers under test (the load
    generator is started after one reading and has ended before the next)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone since the listing
        if int(fields[1]) == os.getpid():
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def cpu_load(url: str, concurrency: int, seconds: float, body: str) -> dict[str, float]:
    """:func:`load`, plus the servers' CPU milliseconds per answered request: on a machine other work
    keeps busy, a steadier measure of what a request costs than req/s."""
    before = servers_cpu_s()
    result = load(url, concurrency, seconds, body)
    answered = max(1.0, result["rps"] * seconds)
    return {**result, "server_cpu_ms": round((servers_cpu_s() - before) * 1000 / answered, 3)}


def sentiment_numbers(seconds: float) -> dict[str, list[dict[str, float]]]:
    """Sentiment over HTTP at 1 and 64 connections, one agent process per core on the native path."""
    cores = os.cpu_count() or 1
    compiled, python = build_compiled("vader"), build_app("sentiment")
    servers = {
        f"agent, builtin://sentiment-vader (compiled), {cores} proc": lambda: agents(
            "native", cores, None, "builtin://sentiment-vader", "sentiment"
        ),
        f"agent, builtin://sentiment-vader (compiled), native HTTP front, {cores} proc": lambda: agents(
            "native", cores, None, "builtin://sentiment-vader", "sentiment", native_http=True
        ),
        f"agent, componentize-py VADER guest, {cores} proc": lambda: agents("native", cores, python),
        f"reference Rust host, compiled VADER, {cores} workers": lambda: reference_host(compiled, cores),
    }
    results = {}
    for name, server in servers.items():
        with server() as url:
            results[name] = [{"concurrency": c, **cpu_load(url, c, seconds, SENTIMENT_INPUT)} for c in (1, 64)]
    return results


def print_sentiment(console: Console, sentiment: dict[str, list[dict[str, float]]]) -> None:
    goal = SENTIMENT_GOALS
    table = Table(
        title=f"Sentiment over HTTP, fresh sandbox per request (goal: p50 <= {goal['p50_ms']} ms at 1 conn, "
        f">= {goal['rps']} req/s per node at 64 conns)"
    )
    for col in ("server", "c=1 p50 ms", "c=1 req/s", "c=64 req/s", "c=64 p50 / p99 ms", "server CPU ms/req"):
        table.add_column(col, justify="right")
    for name, (one, many) in sentiment.items():
        errors = f" ({many['errors'] + one['errors']:.0f} err)" if many["errors"] + one["errors"] else ""
        table.add_row(
            name,
            f"{one['p50_ms']:.2f}",
            f"{one['rps']:.0f}",
            f"{many['rps']:.0f}{errors}",
            f"{many['p50_ms']:.1f} / {many['p99_ms']:.1f}",
            f"{many['server_cpu_ms']:.2f}",
        )
    console.print(table)
    for name, (one, many) in sentiment.items():
        if name.startswith("agent") and "compiled" in name:
            verdict = "met" if one["p50_ms"] <= goal["p50_ms"] and many["rps"] >= goal["rps"] else "NOT met"
            console.print(f"goal sentiment, {name}: p50 {one['p50_ms']:.2f} ms, {many['rps']:.0f} req/s: {verdict}")


def print_starts(console: Console, starts: dict) -> None:
    table = Table(title="Fresh sandbox: start and call (goal: start p50 <= 0.1 ms compiled, <= 1 ms componentize-py)")
    for col in ("guest", "path", "start p50", "start p99", "call p50"):
        table.add_column(col, justify="right")
    for guest, by_path in starts.items():
        for path, s in by_path.items():
            table.add_row(guest, path, *(f"{s[k]:.3f} ms" for k in ("start_p50_ms", "start_p99_ms", "call_p50_ms")))
    console.print(table)


def print_tables(console: Console, starts: dict, slots: dict, http: dict, levels: list[int]) -> None:
    print_starts(console, starts)
    table = Table(title="Idle warm sandboxes (compiled guest)")
    for col in ("path", "slots", "RSS total", "RSS / slot"):
        table.add_column(col, justify="right")
    for path, s in slots.items():
        table.add_row(path, str(s["slots"]), f"{s['idle_total_mib']:.1f} MiB", f"{s['idle_per_slot_kib']:.1f} KiB")
    console.print(table)
    print_http(console, http, levels)


def print_http(console: Console, http: dict, levels: list[int]) -> None:
    reference = next(rows for name, rows in http.items() if name.startswith("reference"))
    goal = GOALS
    table = Table(
        title=f"HTTP, compiled function, fresh sandbox per request (goal at 64 conns: >= {goal['rps']} req/s, "
        f"p50 <= {goal['p50_ms']} ms, p99 <= {goal['p99_ms']} ms, within {goal['vs_reference']}x of the reference)"
    )
    table.add_column("server")
    for level in levels:
        table.add_column(f"c={level} req/s", justify="right")
        table.add_column("p50 / p99 ms", justify="right")
        table.add_column("ref / this", justify="right")
    for name, rows in http.items():
        cells = [name]
        for row, ref in zip(rows, reference, strict=True):
            errors = f" ({row['errors']:.0f} err)" if row["errors"] else ""
            cells += [f"{row['rps']:.0f}{errors}", f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f}"]
            cells.append(f"{ref['rps'] / max(row['rps'], 1e-9):.2f}x")
        table.add_row(*cells)
    console.print(table)
    console.print("Load generator and servers share the machine's cores: every figure is a floor.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--slots", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--sentiment-only", action="store_true", help="only the sentiment-over-HTTP part")
    parser.add_argument("--start-only", action="store_true", help="only the fresh-sandbox start and call table")
    parser.add_argument("--http-only", action="store_true", help="only the compiled function over HTTP")
    args = parser.parse_args()
    console = Console()
    if args.http_only:
        http = http_numbers(compiled_guest(), args.concurrency, args.seconds)
        print_http(console, http, args.concurrency)
        print(json.dumps({"bench": "sandbox", "http": http}))
        return
    if args.sentiment_only:
        sentiment = sentiment_numbers(args.seconds)
        print_sentiment(console, sentiment)
        print(json.dumps({"bench": "sandbox", "sentiment": sentiment}))
        return

    guests = bench_guests()
    backends = {path: wasmtime_backend(path) for path in PATHS}
    starts = {
        label: {path: start_numbers(backend, component, input_json, args.samples) for path, backend in backends.items()}
        for label, (component, input_json) in guests.items()
    }
    if args.start_only:
        print_starts(console, starts)
        print(json.dumps({"bench": "sandbox", "start": starts}))
        return
    compiled, _ = guests["rust textstats (compiled)"]
    slots = {path: idle_slots(backend, compiled, args.slots) for path, backend in backends.items()}
    for backend in backends.values():
        backend.close()
    http = http_numbers(compiled, args.concurrency, args.seconds)
    sentiment = sentiment_numbers(args.seconds)
    print_tables(console, starts, slots, http, args.concurrency)
    print_sentiment(console, sentiment)
    print(json.dumps({"bench": "sandbox", "start": starts, "idle": slots, "http": http, "sentiment": sentiment}))


if __name__ == "__main__":
    main()
