"""Cluster mode: the heartbeat Lease, and following the TarsModel placements for this node.

The agent does not label its Node: it reports its backend in the Lease and the operator labels the
Node, so agents need no cluster-wide permission.

Decisions are pure functions (:func:`placed_models`, :func:`agent_report`); the
:class:`ClusterAgent` only moves data between them and the API server. The kubernetes client blocks,
so every call runs in a thread. Model sync is level-based: a watch only wakes the loop early; each
pass lists the TarsModels and converges the loaded set to the placements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tars_agent import functions
from tars_agent.agent import Agent
from tars_agent.capabilities import ModelKey
from tars_agent.outage import OutageLog
from tars_agent.runtimes.knowledge_store import StoreUnavailable
from tars_api.lease import (
    RENEW_INTERVAL_S,
    AgentReport,
    ModelState,
    lease_body,
    lease_name,
)
from tars_api.meta import GROUP, VERSION
from tars_api.tarsmodel import TarsModel

log = logging.getLogger(__name__)

RESYNC_INTERVAL_S = 30
# How long a model woken from zero by a request stays loaded here while not placed here: the time the
# operator needs to see its load in the Lease and place it (Knative's scale-to-zero grace is as long).
WOKEN_GRACE_S = 30.0
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def agent_namespace() -> str:
    if ns := os.environ.get("POD_NAMESPACE"):
        return ns
    try:
        return _SA_NAMESPACE.read_text().strip()
    except OSError:
        return "default"


def placed_on(obj: dict[str, Any], node: str) -> bool:
    """Whether a TarsModel object's status places at least one replica on ``node``."""
    placements = (obj.get("status") or {}).get("placements") or []
    return any(p.get("node") == node and int(p.get("replicas", 1)) > 0 for p in placements)


def serves(obj: dict[str, Any], tarsnode: str | None) -> bool:
    """Whether a TarsModel belongs to this agent's TarsNode (any, when the agent was not told)."""
    return tarsnode is None or ((obj.get("spec") or {}).get("nodeRef") or {}).get("name") == tarsnode


def placed_models(
    items: list[dict[str, Any]], node: str, tarsnode: str | None = None
) -> tuple[dict[ModelKey, TarsModel], dict[ModelKey, str]]:
    """The TarsModels placed on ``node``, and those placed but invalid (with the reason)."""
    wanted: dict[ModelKey, TarsModel] = {}
    invalid: dict[ModelKey, str] = {}
    for obj in items:
        if not placed_on(obj, node) or not serves(obj, tarsnode):
            continue
        meta = obj.get("metadata") or {}
        key = ModelKey(meta.get("namespace", "default"), meta.get("name", ""))
        try:
            wanted[key] = TarsModel.model_validate(obj)
        except ValidationError as exc:
            invalid[key] = str(exc.errors(include_url=False)[0]["msg"])
    return wanted, invalid


def to_unload(
    loaded: Collection[ModelKey],
    wanted: Collection[ModelKey],
    woken: Mapping[ModelKey, float],
    known: Collection[str],
    now: float,
    grace_s: float = WOKEN_GRACE_S,
) -> set[ModelKey]:
    """Models to unload: those no longer placed here, except one woken from zero here by a request
    (``woken``: when, on the monotonic clock) less than ``grace_s`` ago whose TarsModel still exists.
    Unloaded at the next sync, before the operator placed it, its next request was a cold start again
    and its load vanished from the Lease the autoscaler reads."""
    return {
        key
        for key in set(loaded) - set(wanted)
        if not (key.name in known and now - woken.get(key, -math.inf) < grace_s)
    }


def knowledge_present(items: list[dict[str, Any]]) -> dict[str, bool]:
    """The TarsModels of a namespace listing (name -> spec.knowledge.retain), for the knowledge
    store's lifecycle: tenants of models missing from it are deleted after the grace period."""
    present: dict[str, bool] = {}
    for obj in items:
        name = (obj.get("metadata") or {}).get("name")
        if name:
            present[name] = ((obj.get("spec") or {}).get("knowledge") or {}).get("retain") is True
    return present


def agent_report(agent: Agent, address: str) -> AgentReport:
    load = agent.load_report()
    tokens = agent.token_report()
    models: dict[str, ModelState] = {}
    for key in agent.desired | set(agent.repository.models) | set(agent.repository.failed):
        loaded = agent.repository.models.get(key)
        models[str(key)] = ModelState(
            loaded=loaded is not None,
            in_flight=load.get(str(key), 0.0),
            memory_mib=loaded.spec.memory_mi_b if loaded is not None else 0,
            error=agent.repository.failed.get(key),
            rps=agent.rates.rate(str(key)),
            tokens=tokens.get(str(key), 0.0),
        )
    return AgentReport(
        address=address,
        backend=agent.backend.name,
        capacity_mib=agent.config.capacity_mib,
        ready=agent.ready(),
        draining=agent.draining,
        backend_reason=agent.backend_reason,
        models=models,
        requests=operator_requests(agent),
    )


def operator_requests(agent: Agent) -> list[dict[str, Any]]:
    """What guests asked the operator for (operator.request), for the Lease; the operator acts."""
    return list(agent.services.operator_requests)


LOAD_WINDOW_S = 1.0


class ClusterAgent:
    def __init__(self, agent: Agent, node: str, address: str, tarsnode: str | None = None) -> None:
        from kubernetes import client

        from tars_common.kube import load_client_config

        self.api = load_client_config()
        # urllib3 warns on each of its retries; every loop here logs its own outage once (OutageLog).
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        self.coordination = client.CoordinationV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.agent = agent
        self.node = node
        self.address = address
        self.tarsnode = tarsnode
        self.namespace = agent_namespace()
        self.holder = os.environ.get("POD_NAME") or socket.gethostname()
        self._wake = asyncio.Event()
        self._stop = threading.Event()
        self._acquired = datetime.now(UTC)
        self.lease = lease_name(node, tarsnode)
        # The heartbeat has a thread of its own: in the loop's shared pool it waited behind TokenReviews,
        # TarsModel lists and knowledge loads (each may block for seconds on a store or API outage), and a
        # late renewal makes the operator move every model off a healthy agent.
        self._heartbeat = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease-heartbeat")
        self._knowledge_outage = OutageLog("deleting knowledge documents of deleted TarsModels", log)
        # Every valid TarsModel of this TarsNode by name: a request for one that is not placed here
        # (scaled to zero) loads it on the spot; the load shows in the Lease and the autoscaler follows.
        self.known: dict[str, TarsModel] = {}
        agent.on_demand = self.known.get
        agent.synced = False
        # configmap:// function sources are read from the model's namespace with this agent's client.
        read_configmap = functions.kubernetes_configmap_reader(self.api)
        agent.catalog.schemes["configmap"] = functions.configmap_factory(read_configmap)

    # -- Lease ---------------------------------------------------------------------------------
    def _renew_blocking(self) -> None:
        from kubernetes.client.exceptions import ApiException

        body = lease_body(
            self.node,
            self.namespace,
            self.holder,
            agent_report(self.agent, self.address),
            datetime.now(UTC),
            self.tarsnode,
            self._acquired,
        )
        try:
            self.coordination.patch_namespaced_lease(self.lease, self.namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                self.coordination.create_namespaced_lease(self.namespace, body)  # type: ignore[arg-type]
            except ApiException as race:
                if race.status != 409:  # created meanwhile by a concurrent renewal: update it instead
                    raise
                self.coordination.patch_namespaced_lease(self.lease, self.namespace, body)

    async def renew_once(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._heartbeat, self._renew_blocking)

    async def renew_forever(self) -> None:
        outage = OutageLog(f"renewing Lease {self.lease}", log)
        while True:
            try:
                await self.renew_once()
                outage.succeeded()
            except Exception as exc:
                outage.failed(exc)
            await asyncio.sleep(RENEW_INTERVAL_S - LOAD_WINDOW_S)
            # The report carries the load of its last second only, so a step up shows at full height
            # in the next report instead of diluted by the interval before it (the autoscaler's panic
            # mode follows the latest report). Over the stable window these samples average out.
            self.agent.start_load_window()
            await asyncio.sleep(LOAD_WINDOW_S)

    async def release(self) -> None:
        from kubernetes.client.exceptions import ApiException

        def delete() -> None:
            try:
                self.coordination.delete_namespaced_lease(self.lease, self.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise

        await asyncio.to_thread(delete)

    # -- TarsModel placements ------------------------------------------------------------------
    def _list_blocking(self) -> list[dict[str, Any]]:
        result: dict[str, Any] = self.custom.list_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, self.namespace, "tarsmodels"
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def _watch_blocking(self, loop: asyncio.AbstractEventLoop) -> None:
        from kubernetes import watch

        outage = OutageLog("watching TarsModels", log)
        while not self._stop.is_set():
            try:
                stream = watch.Watch().stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    "tarsmodels",
                    timeout_seconds=60,
                )
                for _event in stream:
                    outage.succeeded()
                    loop.call_soon_threadsafe(self._wake.set)
                    if self._stop.is_set():
                        return
            except Exception as exc:
                outage.failed(exc)
                self._stop.wait(2)

    async def sync_once(self) -> None:
        items = await asyncio.to_thread(self._list_blocking)
        self.known.clear()
        for obj in items:
            if serves(obj, self.tarsnode):
                with contextlib.suppress(ValidationError):
                    model = TarsModel.model_validate(obj)
                    self.known[model.metadata.name] = model
        # The knowledge lifecycle pass judges tenants by this listing, so it runs now, beside the loads:
        # after them (a first load takes seconds) a tenant created meanwhile by a model newer than the
        # listing was marked orphaned, and its grace period started early.
        lifecycle = asyncio.create_task(self.reconcile_knowledge(items))
        try:
            wanted, invalid = placed_models(items, self.node, self.tarsnode)
            for key, reason in invalid.items():
                self.agent.repository.failed[key] = f"invalid TarsModel: {reason}"
            for key in to_unload(self.agent.desired, wanted, self.agent.woken, self.known, time.monotonic()):
                await self.agent.ensure_unloaded(key)
            await asyncio.gather(*(self.agent.ensure_loaded(model) for model in wanted.values()))
            self.agent.synced = True
        finally:
            await lifecycle

    async def reconcile_knowledge(self, items: list[dict[str, Any]]) -> None:
        try:
            dropped = await asyncio.to_thread(
                self.agent.services.reconcile_knowledge,
                self.namespace,
                knowledge_present(items),
                self.agent.config.knowledge_grace_s,
            )
        except StoreUnavailable as exc:
            self._knowledge_outage.failed(exc)
            return
        self._knowledge_outage.succeeded()
        for tenant in dropped:
            log.info("deleted the knowledge documents of %s: its TarsModel is gone", tenant)

    async def sync_forever(self) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._watch_blocking, args=(loop,), name="tarsmodel-watch", daemon=True).start()
        outage = OutageLog("syncing TarsModels", log)
        while True:
            self._wake.clear()
            try:
                await self.sync_once()
                await self.renew_once()  # tell the operator promptly what is loaded now
                outage.succeeded()
            except Exception as exc:
                outage.failed(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RESYNC_INTERVAL_S)

    def stop(self) -> None:
        self._stop.set()
        self._heartbeat.shutdown(wait=False)
