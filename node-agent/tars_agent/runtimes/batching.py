"""Request coalescing for the model runtimes: concurrent calls share one forward pass.

One sentence through MiniLM reads all ~45 MB of encoder weights for very little arithmetic; eight
sentences in one batch cost far less than eight batches of one. :class:`Coalescer` adds no waiting
when idle: the first caller computes at once, callers that arrive meanwhile queue up, and when a
batch finishes one of the callers still waiting takes the queue as the next batch. Each caller
computes at most until its own rows are done: a caller is never kept computing for later arrivals,
which under steady load held one request (and the agent worker running it) for as long as the load
lasted.
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
        self._changed = threading.Condition()
        self._pending: list[tuple[Sequence[str], Future[np.ndarray]]] = []
        self._busy = False

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        future: Future[np.ndarray] = Future()
        with self._changed:
            self._pending.append((texts, future))
        while not future.done():
            with self._changed:
                # Wait until our rows are done or nobody computes; then lead the next batch.
                self._changed.wait_for(lambda: future.done() or not self._busy)
                if future.done():
                    break
                self._busy = True
                batch = self._take_batch()
            try:
                self._compute(batch)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()
        return future.result()

    def _take_batch(self) -> list[tuple[Sequence[str], Future[np.ndarray]]]:
        batch: list[tuple[Sequence[str], Future[np.ndarray]]] = []
        size = 0
        while self._pending and (not batch or size + len(self._pending[0][0]) <= self._max_batch):
            item = self._pending.pop(0)
            batch.append(item)
            size += len(item[0])
        return batch

    def _compute(self, batch: list[tuple[Sequence[str], Future[np.ndarray]]]) -> None:
        texts = [text for request, _ in batch for text in request]
        try:
            rows = self._fn(texts)
        except BaseException as exc:  # every waiting caller must hear about it
            for _, future in batch:
                future.set_exception(exc)
            return
        start = 0
        for request, future in batch:
            future.set_result(rows[start : start + len(request)])
            start += len(request)
