"""Fair admission in front of the agent's shared guest workers, so one tenant cannot starve another.

The :class:`~tars_agent.pool.GuestExecutor` bounds the agent as a whole (``workers`` running, a shared
queue behind them). On a shared agent that alone lets one busy model fill every worker and the shared
queue, and a quiet model's requests then wait behind it or get 429. :class:`FairAdmission` sits in
front of it and admits per model (namespace/name):

- at most :func:`model_cap` of a model's requests hold workers at once. While other models are loaded,
  the cap leaves at least one worker for them (a quiet model never queues behind a busy one unless
  several are busy at once); a model alone on the agent may use every worker if its requests wait in
  shared batches (``batched``: the embedding builtin's ``nn.embed``), else :data:`CPU_BOUND_PER_CORE`
  per core (a request past that only stretches every running call toward its time budget: GPT-2
  small at 8 calls on 2 cores ran all of them out of their 2 s);
- each model waits in its own bounded queue: a model whose queue is full gets 429 (``Overloaded``),
  never its neighbours;
- a freed worker goes to the next waiting model in round-robin order, not to the longest queue;
- under contention each model holds at most its fair share: the agent's CPU-bound concurrency
  (``min(workers, cores)``: more guests running than cores only time-slice a neighbour's call) split
  evenly over the models with work now or within the last :data:`ACTIVE_WINDOW_S`. A CPU burner
  beside a quiet model then runs on its share of the cores, and the quiet model on the rest.

Only the event loop touches this object, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable

from tars_agent.cpus import usable_cpus
from tars_agent.pool import Overloaded

# A model that asked for a worker this recently still counts as having work: a neighbour's
# requests arrive one after another, and the gaps between them must not hand its share back.
ACTIVE_WINDOW_S = 1.0
CPU_BOUND_PER_CORE = 2


def fair_share(workers: int, cores: int, active: int) -> int:
    """One model's share of the CPU-bound concurrency among ``active`` models with work (at least one)."""
    return max(1, min(workers, cores) // max(1, active))


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
        cores: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        batched: Callable[[str], bool] = lambda _model: False,
    ) -> None:
        self.workers = workers
        self._batched = batched
        self.queue_per_model = queue_per_model
        self.per_model = per_model
        self.cores = cores or usable_cpus()
        self._models_loaded = models_loaded
        self._clock = clock
        self._last_asked: dict[str, float] = {}
        self.running: dict[str, int] = {}
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._total = 0

    def cap(self, model: str | None = None) -> int:
        """Workers ``model`` may hold now: :func:`model_cap`, and its fair share while others have work
        (unless the cap was configured explicitly)."""
        base = model_cap(self.workers, self.per_model, self._models_loaded())
        if self.per_model is None and (model is None or not self._batched(model)):
            base = min(base, CPU_BOUND_PER_CORE * self.cores)
        active = self.active_models(model) if model is not None and self.per_model is None else 1
        return base if active <= 1 else min(base, fair_share(self.workers, self.cores, active))

    def active_models(self, model: str) -> int:
        """Models with work: running, waiting, or asking within the last ACTIVE_WINDOW_S (and ``model``)."""
        recent = self._clock() - ACTIVE_WINDOW_S
        asked = {m for m, at in self._last_asked.items() if at >= recent}
        return len({model, *self.running, *self._waiting, *asked})

    def queued(self, model: str) -> int:
        return len(self._waiting.get(model, ()))

    def _can_start(self, model: str) -> bool:
        return self._total < self.workers and self.running.get(model, 0) < self.cap(model)

    def _start(self, model: str) -> None:
        self._total += 1
        self.running[model] = self.running.get(model, 0) + 1

    async def _acquire(self, model: str) -> None:
        self._last_asked[model] = self._clock()
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
