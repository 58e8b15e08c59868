"""A bounded HTTP load generator that runs in its own process.

The demo drives the gateway from a separate Python process (``python -m tarsctl.demo.loadgen``,
JSON job on stdin, JSON result on stdout) so the client's own CPU use does not run on the event
loop or GIL of the process that measures and renders progress bars. A job is bounded by a request
count (and optionally a duration); every request sent is in the result, answered or not.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Job:
    url: str
    body: Any
    requests: int
    concurrency: int
    warmup: int = 0
    timeout_s: float = 60.0
    # Stop issuing new requests after this long (None: send all ``requests``).
    duration_s: float | None = None
    # Raw bytes to send instead of JSON-encoding ``body`` (for malformed-input attempts).
    raw_body: str | None = None


@dataclass
class Result:
    sent: int
    warmup_sent: int
    latencies_ms: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # 0: no HTTP answer (connection error, timeout)
    wall_s: float = 0.0
    started_at: float = 0.0  # time.time() when the measured part began
    sample_errors: list[str] = field(default_factory=list)


async def _run(job: Job) -> Result:
    payload = job.raw_body.encode() if job.raw_body is not None else json.dumps(job.body).encode()
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=job.timeout_s)
    result = Result(sent=0, warmup_sent=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> tuple[float, int, str]:
            started = time.perf_counter()
            try:
                async with session.post(job.url, data=payload, headers=headers) as response:
                    text = await response.read()
                    status = response.status
                    detail = text[:200].decode(errors="replace") if status >= 400 else ""
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, detail = 0, f"{type(exc).__name__}: {exc}"[:200]
            return (time.perf_counter() - started) * 1000, status, detail

        for _ in range(job.warmup):
            await one()
            result.warmup_sent += 1

        remaining = job.requests
        deadline = None if job.duration_s is None else time.perf_counter() + job.duration_s
        lock = asyncio.Lock()

        async def worker() -> None:
            nonlocal remaining
            while True:
                async with lock:
                    if remaining <= 0 or (deadline is not None and time.perf_counter() >= deadline):
                        return
                    remaining -= 1
                    result.sent += 1
                latency, status, detail = await one()
                result.latencies_ms.append(latency)
                result.statuses.append(status)
                if detail and len(result.sample_errors) < 5:
                    result.sample_errors.append(f"{status}: {detail}")

        result.started_at = time.time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(job.concurrency)))
        result.wall_s = time.perf_counter() - started
    return result


def run_inline(job: Job) -> Result:
    return asyncio.run(_run(job))


def _job_json(job: Job) -> str:
    return json.dumps(job.__dict__)


def _result(stdout: str) -> Result:
    return Result(**json.loads(stdout))


def _deadline_s(job: Job) -> float:
    """How long the whole job may take: each request its timeout, or the duration and one more round."""
    if job.duration_s is not None:
        return job.duration_s + job.timeout_s * (1 + job.warmup) + 60
    return job.timeout_s * max(1, job.requests + job.warmup) + 60


def run(job: Job) -> Result:
    """Runs ``job`` in a separate process and waits for it."""
    completed = subprocess.run(
        [sys.executable, "-m", "tarsctl.demo.loadgen"],
        input=_job_json(job),
        capture_output=True,
        text=True,
        timeout=_deadline_s(job),
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"load generator failed: {completed.stderr[-2000:]}")
    return _result(completed.stdout)


class Background:
    """A load generator process running while the caller measures something else."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tarsctl.demo.loadgen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.popen.stdin is not None
        self.popen.stdin.write(_job_json(job))
        self.popen.stdin.close()

    def wait(self) -> Result:
        assert self.popen.stdout is not None and self.popen.stderr is not None
        stdout = self.popen.stdout.read()
        stderr = self.popen.stderr.read()
        if self.popen.wait() != 0:
            raise RuntimeError(f"load generator failed: {stderr[-2000:]}")
        return _result(stdout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def main() -> None:
    job = Job(**json.loads(sys.stdin.read()))
    print(json.dumps(run_inline(job).__dict__))


if __name__ == "__main__":
    main()
