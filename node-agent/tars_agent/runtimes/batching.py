"""Request coalescing for the model runtimes: concurrent calls share one forward pass.

One sentence through MiniLM reads all ~90 MB of weights for very little arithmetic; eight
sentences in one batch cost little more than one. :class:`Coalescer` adds no waiting when idle:
the first caller computes at once, callers that arrive meanwhile queue up, and whoever is computing
takes the whole queue as the next batch when it finishes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

BatchFn = Callable[[Sequence[str]], np.ndarray]


class Coalescer:
    """Wraps ``fn`` (texts -> one row per text) so concurrent callers are served in shared batches."""

    def __init__(self, fn: BatchFn, max_batch: int = 64) -> None:
        self._fn = fn
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[tuple[Sequence[str], Future[np.ndarray]]] = []
        self._busy = False

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        future: Future[np.ndarray] = Future()
        with self._lock:
            self._pending.append((texts, future))
            lead = not self._busy
            self._busy = True
        if lead:
            self._drain()
        return future.result()

    def _take_batch(self) -> list[tuple[Sequence[str], Future[np.ndarray]]]:
        batch: list[tuple[Sequence[str], Future[np.ndarray]]] = []
        size = 0
        with self._lock:
            while self._pending and (not batch or size + len(self._pending[0][0]) <= self._max_batch):
                item = self._pending.pop(0)
                batch.append(item)
                size += len(item[0])
            if not batch:
                self._busy = False
        return batch

    def _drain(self) -> None:
        while batch := self._take_batch():
            texts = [text for request, _ in batch for text in request]
            try:
                rows = self._fn(texts)
            except BaseException as exc:  # every waiting caller must hear about it
                for _, future in batch:
                    future.set_exception(exc)
                continue
            start = 0
            for request, future in batch:
                future.set_result(rows[start : start + len(request)])
                start += len(request)
