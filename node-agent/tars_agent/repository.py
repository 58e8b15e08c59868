"""The models loaded on this agent, keyed by namespace/name, each with its warm sandbox pool.

Loading resolves the source through the catalog, prepares the guest on the backend, binds the
model's allowlisted host capabilities and fills the pool; all of it blocking work done on a thread.
Reloading with an unchanged spec does nothing; a changed spec swaps the model in place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tars_agent.capabilities import CapabilityFn, CapabilityRegistry, ModelKey, host_call_for, request_deadline
from tars_agent.catalog import Catalog, ModelBundle
from tars_agent.metrics import AgentMetrics
from tars_agent.pool import GuestExecutor, SandboxPool
from tars_agent.sandbox.base import Limits, SandboxBackend
from tars_api.tarsmodel import TarsModel, TarsModelSpec
from tars_api.tarsnode import SandboxLimits

log = logging.getLogger(__name__)
MiB = 1024 * 1024


def effective_limits(node: SandboxLimits, spec: TarsModelSpec) -> Limits:
    """The model's limits, never above the node's ceilings."""
    model = spec.limits

    def lower(ceiling: int, wanted: int | None) -> int:
        return ceiling if wanted is None else min(ceiling, wanted)

    cpu = lower(node.cpu_time_ms, model.cpu_time_ms)
    return Limits(
        memory_bytes=lower(node.memory_mi_b, model.memory_mi_b) * MiB,
        cpu_time_ms=cpu,
        wall_timeout_ms=max(cpu, node.wall_timeout_ms),
        output_bytes=lower(node.output_bytes, model.output_bytes),
    )


class LayeredCapabilities(CapabilityRegistry):
    """A model's own capabilities first, then the agent-wide ones."""

    def __init__(self, own: CapabilityRegistry, parent: CapabilityRegistry) -> None:
        super().__init__()
        self._own = own
        self._parent = parent

    def get(self, name: str) -> CapabilityFn | None:
        return self._own.get(name) or self._parent.get(name)

    def names(self) -> list[str]:
        return sorted({*self._own.names(), *self._parent.names()})


@dataclass
class LoadedModel:
    key: ModelKey
    spec: TarsModelSpec
    generation: int
    bundle: ModelBundle
    limits: Limits
    pool: SandboxPool

    @property
    def version(self) -> str:
        return str(self.generation or 1)

    def close(self) -> None:
        self.pool.close()
        if self.bundle.close is not None:
            self.bundle.close()


def _run_bounded(model: LoadedModel, input_json: str) -> str:
    # Epoch ticks are wall-clock time inside the guest, so the guest may run (or wait in a host call)
    # until the earlier of its CPU and wall limits; waits end a tenth before that, so it can answer.
    with request_deadline(0.9 * min(model.limits.cpu_time_ms, model.limits.wall_timeout_ms) / 1000):
        return model.pool.run(input_json)


class AmbiguousModel(LookupError):
    """Several namespaces hold a model of this name."""


class ModelRepository:
    def __init__(
        self,
        backend: SandboxBackend,
        catalog: Catalog,
        capabilities: CapabilityRegistry,
        metrics: AgentMetrics,
        node_limits: SandboxLimits,
        warm_pool_size: int,
        executor: GuestExecutor,
    ) -> None:
        self.backend = backend
        self.catalog = catalog
        self.capabilities = capabilities
        self.metrics = metrics
        self.node_limits = node_limits
        self.warm_pool_size = warm_pool_size
        self.executor = executor
        self.models: dict[ModelKey, LoadedModel] = {}
        self.failed: dict[ModelKey, str] = {}
        # Loads compile and build for seconds; keep them off the guest workers.
        self._loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="load")
        self._refiller = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refill")
        self._locks: dict[ModelKey, asyncio.Lock] = {}
        # Called after any model is loaded, swapped or unloaded (the native front's routes follow).
        self.on_change: list[Callable[[], None]] = []

    def find(self, name: str) -> LoadedModel | None:
        """The loaded model called ``name`` (metadata.name) in any namespace."""
        matches = [m for key, m in self.models.items() if key.name == name]
        if len(matches) > 1:
            raise AmbiguousModel(f"model name {name!r} exists in several namespaces")
        return matches[0] if matches else None

    def _load_blocking(self, key: ModelKey, spec: TarsModelSpec, generation: int, prefill: bool) -> LoadedModel:
        bundle = self.catalog.resolve(key, spec)
        own = CapabilityRegistry()
        for cap_name, fn in bundle.capabilities.items():
            own.register(cap_name, fn)
        host_call = host_call_for(
            LayeredCapabilities(own, self.capabilities),
            key,
            [str(c) for c in spec.capabilities],
            self.metrics,
        )
        limits = effective_limits(self.node_limits, spec)
        prepared = self.backend.prepare(bundle.guest, host_call, limits)
        pool = SandboxPool(prepared, self.warm_pool_size, self._refiller, self.metrics, str(key))
        if prefill:
            pool.fill()
        return LoadedModel(key=key, spec=spec, generation=generation, bundle=bundle, limits=limits, pool=pool)

    async def load(self, model: TarsModel, prefill: bool = True) -> LoadedModel:
        """Loads (or swaps in) a model; without ``prefill`` its warm pool fills after the first request
        takes an instance, so a request waiting for the load (a cold start) is answered sooner."""
        key = ModelKey(model.metadata.namespace, model.metadata.name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            current = self.models.get(key)
            if current is not None and current.spec == model.spec:
                return current
            loop = asyncio.get_running_loop()
            try:
                loaded = await loop.run_in_executor(
                    self._loader, self._load_blocking, key, model.spec, model.metadata.generation, prefill
                )
            except Exception as exc:
                self.failed[key] = f"{type(exc).__name__}: {exc}"
                raise
            self.failed.pop(key, None)
            self.models[key] = loaded
            self.metrics.models_loaded.set(len(self.models))
            self._changed()
            if current is not None:
                current.close()
            log.info("loaded model %s (%s) on %s", key, model.spec.source or "inline function", self.backend.name)
            return loaded

    async def unload(self, key: ModelKey) -> None:
        loaded = self.models.pop(key, None)
        self.failed.pop(key, None)
        self.metrics.models_loaded.set(len(self.models))
        self._changed()
        if loaded is not None:
            loaded.close()
            log.info("unloaded model %s", key)

    def _changed(self) -> None:
        for hook in self.on_change:
            hook()

    async def invoke(self, model: LoadedModel, input_json: str, on_stopped: Callable[[], None] | None = None) -> str:
        """One guest call in a fresh sandbox, under the agent's admission control; ``on_stopped`` runs once
        the guest has stopped (which may be after the caller was told of a timeout)."""
        return await self.executor.run(
            lambda: _run_bounded(model, input_json), model.limits.wall_timeout_ms / 1000, on_stopped
        )

    def close(self) -> None:
        for loaded in self.models.values():
            loaded.close()
        self.models.clear()
        self._loader.shutdown(wait=False, cancel_futures=True)
        self._refiller.shutdown(wait=False, cancel_futures=True)
