"""The agent: one backend, one capability registry, one catalog, one model repository, one executor."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tars_agent.assembly import default_catalog
from tars_agent.capabilities import CapabilityRegistry, ModelKey, default_registry
from tars_agent.catalog import Catalog
from tars_agent.cpus import usable_cpus
from tars_agent.metrics import AgentMetrics
from tars_agent.pool import GuestExecutor
from tars_agent.repository import ModelRepository
from tars_agent.runtimes.knowledge_store import DocumentStore, StoreUnavailable, open_store
from tars_agent.runtimes.services import ModelServices
from tars_agent.sandbox.base import SandboxBackend
from tars_api.tarsmodel import HostCapability, ModelKind, TarsModel
from tars_api.tarsnode import SandboxLimits
from tars_common.http_limits import HttpLimits

log = logging.getLogger(__name__)


class RateMeter:
    """Requests per second per model over a sliding window of whole-second buckets."""

    def __init__(self, window_s: int = 10, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._buckets: dict[str, deque[list[int]]] = {}

    def record(self, model: str, count: int = 1) -> None:
        second = math.floor(self._clock())
        buckets = self._buckets.setdefault(model, deque())
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += count
        else:
            buckets.append([second, count])
        while buckets and buckets[0][0] <= second - self.window_s:
            buckets.popleft()

    def rate(self, model: str) -> float:
        oldest = math.floor(self._clock()) - self.window_s
        return sum(n for second, n in self._buckets.get(model, ()) if second > oldest) / self.window_s


class ConcurrencyMeter:
    """Requests in flight per model (or their weight: tokens asked for), averaged over time since the
    last read.

    This is what the autoscaler needs (as Knative's queue-proxy reports): an instantaneous sample
    taken every couple of seconds mostly sees zero when requests last milliseconds, however busy
    the model is."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._window_start = clock()
        self._current: dict[str, float] = {}
        self._area: dict[str, float] = {}
        self._changed: dict[str, float] = {}

    def _advance(self, model: str, now: float) -> None:
        since = max(self._changed.get(model, self._window_start), self._window_start)
        self._area[model] = self._area.get(model, 0.0) + self._current.get(model, 0) * (now - since)
        self._changed[model] = now

    def begin(self, model: str, weight: float = 1.0) -> None:
        self._advance(model, self._clock())
        self._current[model] = self._current.get(model, 0) + weight

    def end(self, model: str, weight: float = 1.0) -> None:
        self._advance(model, self._clock())
        self._current[model] = max(0.0, self._current.get(model, 0) - weight)

    def add(self, model: str, request_seconds: float) -> None:
        """Requests served elsewhere (the native front), counted by their total duration when they
        ended: in flight on average is time spent serving over the window (Little's law)."""
        self._area[model] = self._area.get(model, 0.0) + request_seconds

    def read(self) -> dict[str, float]:
        """Average in flight per model since the previous read; starts the next window."""
        now = self._clock()
        window = now - self._window_start
        for model in list(self._current):
            self._advance(model, now)
        averages = {
            m: (area / window if window > 0 else float(self._current.get(m, 0))) for m, area in self._area.items()
        }
        self._area.clear()
        self._window_start = now
        return averages


WORKERS_PER_CPU = 4


def default_workers() -> int:
    """Guest calls run at once unless configured: 4 per CPU this process may use (:func:`usable_cpus`).

    A guest waiting in a batched host capability (``nn.embed``) holds its worker, so the worker count
    caps how many requests can share one forward pass: with 4 workers on 2 cores MiniLM's batches
    stayed at 2-3 and one core idled. Models whose requests each use a core still hold at most 2 per
    core (:class:`~tars_agent.tenancy.FairAdmission`), as with the former 4 on 2 cores.
    """
    return WORKERS_PER_CPU * usable_cpus()


@dataclass
class AgentConfig:
    port: int = 8080
    host: str = "0.0.0.0"
    workers: int = field(default_factory=default_workers)
    max_queue: int = 64
    warm_pool_size: int = 4
    node_limits: SandboxLimits = field(default_factory=SandboxLimits)
    max_body_bytes: int = 8 * 1024 * 1024
    drain_timeout_s: float = 30.0
    # Unready once every worker has been taken this long with none freed: guests that stopped never
    # hold a worker past their wall-clock limit, so the agent is wedged and should get no traffic.
    unready_after_saturated_s: float = 20.0
    # The TarsNode's spec.modelRoots: the only directories file:// sources may load from.
    model_roots: tuple[Path, ...] = ()
    # Slow clients and open connections are bounded (header, body and idle deadlines, a cap).
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    capacity_mib: int = 4096
    # Tenants' knowledge documents: "sqlite" in state_dir (in memory without one), or "postgres" at
    # knowledge_dsn (from the TarsNode's Secret). Documents of a deleted TarsModel are dropped this
    # long after it is gone, unless its spec.knowledge.retain is true.
    knowledge_backend: str = "sqlite"
    state_dir: Path | None = None
    knowledge_dsn: str | None = field(default=None, repr=False)
    knowledge_grace_s: float = 86400.0


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        backend: SandboxBackend,
        backend_reason: str = "",
        capabilities: CapabilityRegistry | None = None,
        catalog: Catalog | None = None,
        services: ModelServices | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.backend_reason = backend_reason
        self.metrics = AgentMetrics()
        self.metrics.backend.info({"backend": backend.name, "reason": backend_reason[:200]})
        self.capabilities = capabilities if capabilities is not None else default_registry()
        # The agent owns its model services (shared runtimes, knowledge stores, operator requests);
        # they serve models and capabilities only through the default catalog.
        self.services = services if services is not None else ModelServices(knowledge_store=open_store_for(config))
        self.catalog = catalog if catalog is not None else default_catalog(self.services, self.capabilities)
        self.catalog.model_roots = tuple(config.model_roots)
        self.executor = GuestExecutor(config.workers, config.max_queue)
        self.repository = ModelRepository(
            backend,
            self.catalog,
            self.capabilities,
            self.metrics,
            config.node_limits,
            config.warm_pool_size,
            self.executor,
        )
        # Models this agent should hold (placements or --model files); ready once every one has been
        # tried. A model that failed to load is not served (its own readiness says so) but never holds
        # the agent's readiness hostage: one bad object must not stall its neighbours.
        self.desired: set[ModelKey] = set()
        self.rates = RateMeter()
        self.concurrency = ConcurrencyMeter()
        # Tokens that queued and in-flight generation requests asked for: text generation scales on it.
        self.tokens = ConcurrencyMeter()
        # Cluster mode sets this: a model of this agent's TarsNode by name, to load on first request.
        self.on_demand: Callable[[str], TarsModel | None] | None = None
        # Models loaded here for a waiting request (woken from zero): when, on the monotonic clock.
        self.woken: dict[ModelKey, float] = {}
        # Cluster mode clears this until its first sync: until then nothing says what it must serve,
        # and a restarted agent that called itself ready would take traffic with no model loaded.
        self.synced = True
        # functions.invoke reaches the other models loaded here.
        self.services.attach_repository(self.repository)

    @property
    def draining(self) -> bool:
        return self.executor.draining

    def waits_in_batches(self, label: str) -> bool:
        """Whether the model ``namespace/name`` spends its requests waiting in a shared batch (an
        embedding model on nn.embed) rather than on a core: fair admission then lets it hold every worker."""
        namespace, _, name = label.partition("/")
        loaded = self.repository.models.get(ModelKey(namespace, name))
        return (
            loaded is not None
            and loaded.spec.kind == ModelKind.EMBEDDING
            and HostCapability.NN_EMBED in loaded.spec.capabilities
        )

    def ready(self) -> bool:
        wedged = self.executor.saturated_for() > self.config.unready_after_saturated_s
        settled = set(self.repository.models) | set(self.repository.failed)
        return self.synced and not self.draining and not wedged and self.desired <= settled

    async def ensure_loaded(self, model: TarsModel, prefill: bool = True) -> bool:
        """Loads a model (idempotent); False, logged and remembered, when it cannot be loaded. A request
        waiting for the model (a cold start) loads it without ``prefill``: its warm pool fills afterwards."""
        key = ModelKey(model.metadata.namespace, model.metadata.name)
        self.desired.add(key)
        try:
            if uses_knowledge(model):
                self.services.set_retain(key, model.spec.knowledge.retain)
            if uses_knowledge(model) and key not in self.repository.models:
                # Its documents are in this agent's cache before the model counts as loaded (ready).
                try:
                    count = await asyncio.to_thread(self.services.load_tenant, key)
                except StoreUnavailable as exc:
                    self.repository.failed[key] = str(exc)  # not served; the next sync pass retries
                    raise
                log.info("loaded %d knowledge documents of %s", count, key)
            await self.repository.load(model, prefill=prefill)
        except Exception:
            log.exception("loading model %s failed", key)
            return False
        return True

    async def wake(self, model: TarsModel) -> bool:
        """Loads a model for a request waiting on it (a cold start): without ``prefill``, and kept a
        while even though it is not placed here (``tars_agent.cluster.to_unload``)."""
        self.woken[ModelKey(model.metadata.namespace, model.metadata.name)] = time.monotonic()
        return await self.ensure_loaded(model, prefill=False)

    async def ensure_unloaded(self, key: ModelKey) -> None:
        self.woken.pop(key, None)
        self.desired.discard(key)
        await self.repository.unload(key)

    def load_report(self) -> dict[str, float]:
        """Requests in flight per loaded model (namespace/name), averaged since the last report."""
        averages = self.concurrency.read()
        return {str(key): averages.get(str(key), 0.0) for key in self.repository.models}

    def start_load_window(self) -> None:
        """The next load and token reports average from now (the Lease reports the last second)."""
        self.concurrency.read()
        self.tokens.read()

    def token_report(self) -> dict[str, float]:
        """Tokens asked for by queued and in-flight requests per model, averaged since the last report."""
        averages = self.tokens.read()
        return {str(key): averages.get(str(key), 0.0) for key in self.repository.models}

    async def drain(self) -> bool:
        return await self.executor.drain(self.config.drain_timeout_s)

    def close(self) -> None:
        self.repository.close()
        self.executor.close()
        self.services.close()
        self.backend.close()


def uses_knowledge(model: TarsModel) -> bool:
    return bool({HostCapability.KNOWLEDGE_QUERY, HostCapability.KNOWLEDGE_UPSERT} & set(model.spec.capabilities))


def open_store_for(config: AgentConfig) -> DocumentStore:
    store = open_store(config.knowledge_backend, config.state_dir, config.knowledge_dsn)
    if not store.durable:
        log.warning("knowledge documents are kept in memory only: give the agent a state directory")
    return store
