"""With the agent's default configuration, concurrent requests to the embedding builtin share one
MiniLM batch as large as the workers allow (issue 21: 4 workers on 2 cores kept batches at 2-3),
while models whose requests each use a core stay at 2 per core."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from tars_agent.agent import Agent, AgentConfig, default_workers
from tars_agent.cpus import usable_cpus
from tars_agent.main import build_parser
from tars_agent.runtimes.batching import Coalescer
from tars_agent.runtimes.minilm import MiniLMEmbedder
from tars_agent.sandbox.wasmtime_backend import WasmtimeBackend
from tars_agent.tenancy import FairAdmission
from tests.models.conftest import ModelAgent, SessionBackend, tars_model


def test_usable_cpus_honour_a_cgroup_cpu_limit(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert usable_cpus(cpu_max) == affinity  # no cgroup v2 file
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")  # limits.cpu: 500m
    assert usable_cpus(cpu_max) == 1
    cpu_max.write_text(f"{(affinity + 8) * 100000} 100000\n")  # above the CPUs it may run on
    assert usable_cpus(cpu_max) == affinity


def test_default_workers_scale_with_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    cpus = usable_cpus()
    assert default_workers() == 4 * cpus
    assert AgentConfig().workers == 4 * cpus
    monkeypatch.delenv("TARS_WORKERS", raising=False)
    assert build_parser().parse_args([]).workers == 4 * cpus
    monkeypatch.setenv("TARS_WORKERS", "3")
    assert build_parser().parse_args([]).workers == 3


def test_every_default_worker_can_wait_in_one_shared_batch(embedder: MiniLMEmbedder) -> None:
    backend = SessionBackend()
    agent = Agent(AgentConfig(warm_pool_size=1), backend)
    loop = asyncio.new_event_loop()
    try:
        loaded = loop.run_until_complete(
            agent.repository.load(tars_model("embedding", "builtin://all-minilm-l6-v2", "embedding", ["nn.embed"]))
        )
        batches: list[int] = []
        first_batch_running, release_first = threading.Event(), threading.Event()

        def gated_embed(texts: Sequence[str]) -> np.ndarray:
            batches.append(len(texts))
            if len(batches) == 1:
                first_batch_running.set()
                assert release_first.wait(120)
            return embedder.embed(texts)

        coalescer = Coalescer(gated_embed)
        agent.services._coalescer = coalescer
        callers = agent.config.workers
        texts = [f"request {i} about pods and nodes" for i in range(callers)]

        async def run_all() -> list[str]:
            calls = [asyncio.ensure_future(agent.repository.invoke(loaded, json.dumps({"text": t}))) for t in texts]
            deadline = time.monotonic() + 120
            # The first caller computes alone; every other worker's guest then waits in nn.embed.
            while not (first_batch_running.is_set() and len(coalescer._pending) == callers - 1):
                assert time.monotonic() < deadline, f"{len(coalescer._pending)} of {callers - 1} callers queued"
                await asyncio.sleep(0.01)
            release_first.set()
            return await asyncio.gather(*calls)

        replies = loop.run_until_complete(run_all())
    finally:
        release_first.set()
        agent.close()
        loop.close()
        WasmtimeBackend.close(backend)
    assert batches == [1, callers - 1]
    assert callers - 1 > 4 or usable_cpus() == 1  # before: 4 workers, batches of 3 at most
    vectors = np.array([json.loads(reply)["embedding"] for reply in replies])
    np.testing.assert_allclose(vectors, embedder.embed(texts), atol=2e-5)  # each caller got its own row


def test_only_batched_models_may_hold_every_default_worker(model_agent: ModelAgent) -> None:
    agent = model_agent.agent
    assert agent.waits_in_batches("default/embedding")
    assert not agent.waits_in_batches("default/sentiment")  # VADER runs in its guest
    assert not agent.waits_in_batches("default/edge-tiny")  # generation uses a core per request
    assert not agent.waits_in_batches("default/not-loaded")
    admission = FairAdmission(8, 16, models_loaded=lambda: 1, cores=2, batched=agent.waits_in_batches)
    assert admission.cap("default/embedding") == 8
    assert admission.cap("default/edge-tiny") == 4  # GPT-2 small at 8 calls on 2 cores ran out of its budget
    assert admission.cap() == 4
    configured = FairAdmission(8, 16, per_model=6, cores=2, batched=agent.waits_in_batches)
    assert configured.cap("default/edge-tiny") == 6  # --model-concurrency decides when given
