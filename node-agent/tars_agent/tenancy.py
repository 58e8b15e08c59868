"""Fair admission in front of the agent's shared guest workers, so one tenant cannot starve another.

The :class:`~tars_agent.pool.GuestExecutor` bounds the agent as a whole (``workers`` running, a shared
queue behind them). On a shared agent that alone lets one busy model fill every worker and the shared
queue, and a quiet model's requests then wait behind it or get 429. :class:`FairAdmission` sits in
front of it and admits per model (namespace/name):

- at most :func:`model_cap` of a model's requests hold workers at once. While other models are loaded,
  the cap leaves at least one worker for them (a quiet model never queues behind a busy one unless
  several are busy at once); a model alone on the agent may use every worker;
- each model waits in its own bounded queue: a model whose queue is full gets 429 (``Overloaded``),
  never its neighbours;
- a freed worker goes to the next waiting model in round-robin order, not to the longest queue.

Only the event loop touches this object, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable

from tars_agent.pool import Overloaded


def model_cap(workers: int, configured: int | None, models_loaded: int) -> int:
    """Workers one model may hold: ``configured`` if given, else all of them when the model is alone
    and all but one when it shares the agent (at least one either way)."""
    if configured is not None:
        return max(1, min(configured, workers))
    return workers if models_loaded <= 1 else max(1, workers - 1)


class FairAdmission:
    def __init__(
        self,
        workers: int,
        queue_per_model: int,
        per_model: int | None = None,
        models_loaded: Callable[[], int] = lambda: 1,
    ) -> None:
        self.workers = workers
        self.queue_per_model = queue_per_model
        self.per_model = per_model
        self._models_loaded = models_loaded
        self.running: dict[str, int] = {}
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._total = 0

    def cap(self) -> int:
        return model_cap(self.workers, self.per_model, self._models_loaded())

    def queued(self, model: str) -> int:
        return len(self._waiting.get(model, ()))

    def _can_start(self, model: str) -> bool:
        return self._total < self.workers and self.running.get(model, 0) < self.cap()

    def _start(self, model: str) -> None:
        self._total += 1
        self.running[model] = self.running.get(model, 0) + 1

    async def _acquire(self, model: str) -> None:
        if not self.queued(model) and self._can_start(model):
            self._start(model)
            return
        if self.queued(model) >= self.queue_per_model:
            raise Overloaded()
        queue = self._waiting.setdefault(model, deque())
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # A client that gave up: leave the queue, or hand back a slot granted meanwhile.
            if waiter.done() and not waiter.cancelled():
                self._release(model)
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
                if not queue:
                    self._waiting.pop(model, None)
            raise

    def _release(self, model: str) -> None:
        self._total -= 1
        self.running[model] -= 1
        if not self.running[model]:
            del self.running[model]
        self._dispatch()

    def _dispatch(self) -> None:
        """Grants free workers round-robin over the models that wait and are under their cap."""
        progressed = True
        while progressed and self._total < self.workers and self._waiting:
            progressed = False
            for model in list(self._waiting):
                if not self._can_start(model):
                    continue
                queue = self._waiting[model]
                waiter = queue.popleft()
                # Served models go to the back of the line: the round robin.
                self._waiting.move_to_end(model)
                if not queue:
                    del self._waiting[model]
                self._start(model)
                waiter.set_result(None)
                progressed = True
                break

    async def acquire(self, model: str) -> None:
        """Waits for a worker for ``model`` (Overloaded when its queue is full); pair with :meth:`release`."""
        await self._acquire(model)

    def release(self, model: str) -> None:
        self._release(model)

    @contextlib.asynccontextmanager
    async def slot(self, model: str) -> AsyncIterator[None]:
        await self._acquire(model)
        try:
            yield
        finally:
            self._release(model)
