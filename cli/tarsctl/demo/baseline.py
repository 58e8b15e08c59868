"""The one-container-per-model baseline, measured rather than assumed.

Without TARS, each model runs in its own container with its own language runtime. Here each
benchmarked model gets its own standalone ``tars-agent`` process holding only that model (the same
code, sandbox limits and warm pool as the TARS agents, from the demo's TarsNode): the process's whole
RSS is the container's memory, and its saturated req/s, driven directly (a Service routes at L4, so
there is no gateway hop), is the container's throughput.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tarsctl import localcluster
from tarsctl.demo import measure, system
from tarsctl.demo.plan import BenchmarkCase, SaturationPlan
from tarsctl.fleet import stop_process

READY_TIMEOUT_S = 300.0


def _start(model: Path, tarsnode: Path, roots: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "tars_agent.main", "--standalone", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--model", str(model), "--node-config", str(tarsnode), "--log-level", "warning"]
    for root in roots:
        argv += ["--model-root", root]
    return subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"baseline agent exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"baseline agent not ready in {READY_TIMEOUT_S:.0f}s: {log.read_text(errors='replace')[-2000:]}")


def measure_one(
    doc: dict[str, Any], case: BenchmarkCase, tarsnode_doc: dict[str, Any], workdir: Path, saturation: SaturationPlan
) -> dict[str, Any]:
    """One model alone in its own agent: memory when ready and after load, saturated throughput."""
    name = doc["metadata"]["name"]
    folder = workdir / "baseline"
    folder.mkdir(parents=True, exist_ok=True)
    model, tarsnode, log = folder / f"{name}.yaml", folder / "tarsnode.yaml", folder / f"{name}.log"
    model.write_text(yaml.safe_dump({**doc, "metadata": {"name": name, "namespace": "default"}}))
    tarsnode.write_text(yaml.safe_dump(tarsnode_doc))
    port = localcluster.free_port()
    started = time.perf_counter()
    process = _start(model, tarsnode, tarsnode_doc.get("spec", {}).get("modelRoots", []), port, log)
    try:
        _wait_ready(process, port, log)
        ready_s = time.perf_counter() - started
        time.sleep(1.0)  # the warm pool refills after load: a container pays for it too
        rss_ready = system.rss_mib(process.pid)
        url = system.model_url(f"http://127.0.0.1:{port}", name, case.route)
        _, single = measure.run(url, case.body, case.single_user_requests, 1, warmup=case.warmup)
        saturated = measure.saturate(url, case.body, case.concurrency, saturation)
        rss_loaded = system.rss_mib(process.pid)
    finally:
        stop_process(process, timeout=30)
    return {
        "model": name,
        "ready_s": ready_s,
        "rss_ready_mib": rss_ready,
        "rss_after_load_mib": rss_loaded,
        "rss_mib": max(rss_ready, rss_loaded),
        "single_user": single.to_json(),
        "saturation": saturated,
    }
