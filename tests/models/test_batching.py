"""Request coalescing: concurrent callers share batches and each gets exactly its own rows."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tars_agent.runtimes.batching import Coalescer
from tars_agent.runtimes.minilm import MiniLMEmbedder


def test_concurrent_callers_get_their_own_rows_in_shared_batches() -> None:
    batches: list[int] = []
    lock = threading.Lock()

    def slow_lengths(texts: Sequence[str]) -> np.ndarray:
        with lock:
            batches.append(len(texts))
        time.sleep(0.02)  # long enough for the other callers to queue up
        return np.array([[len(t)] for t in texts], dtype=np.float32)

    coalesce = Coalescer(slow_lengths, max_batch=64)
    requests = [["x" * (i + 1)] * (1 + i % 3) for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(coalesce, requests))
    for request, rows in zip(requests, results, strict=True):
        assert rows.tolist() == [[len(t)] for t in request]
    assert sum(batches) == sum(len(r) for r in requests)
    assert len(batches) < len(requests)  # some calls were served together


def test_a_caller_returns_once_its_own_rows_are_done() -> None:
    """The first caller must not be kept computing the batches of callers that came later."""
    first_started, release_first, release_second = threading.Event(), threading.Event(), threading.Event()

    def gated(texts: Sequence[str]) -> np.ndarray:
        if texts[0] == "first":
            first_started.set()
            assert release_first.wait(30)
        else:
            assert release_second.wait(30)
        return np.zeros((len(texts), 1), dtype=np.float32)

    coalesce = Coalescer(gated)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(coalesce, ["first"])
        assert first_started.wait(30)
        second = pool.submit(coalesce, ["second"])  # queues behind the running batch
        while not coalesce._pending:
            time.sleep(0.001)
        release_first.set()
        first.result(timeout=30)  # before: stuck computing "second" until release_second
        assert not second.done()
        release_second.set()
        assert second.result(timeout=30).shape == (1, 1)


def test_errors_reach_every_waiting_caller() -> None:
    def broken(_texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError("model fell over")

    with pytest.raises(RuntimeError, match="fell over"):
        Coalescer(broken)(["a"])


def test_coalesced_embeddings_equal_direct_ones(embedder: MiniLMEmbedder) -> None:
    coalesce = Coalescer(embedder.embed)
    texts = [f"sentence number {i} about nodes" for i in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        rows = list(pool.map(lambda t: coalesce([t])[0], texts))
    np.testing.assert_allclose(np.vstack(rows), embedder.embed(texts), atol=2e-5)
