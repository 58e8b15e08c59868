"""Level-based reconciliation of TarsNodes and TarsModels.

One idempotent reconcile per object reads the desired state (spec) and the observed state (children
and agents, from kopf indexes), applies the difference and writes status. It is called from watch
events of the object, of its children and of agents' Leases, and from timers as a safety net;
bursts of triggers for one object collapse into at most one extra run.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from tars_api import API_VERSION, GROUP, TarsModel, TarsNode
from tars_api.functions import validate_function
from tars_api.labels import MANAGED_BY, MODEL_LABEL, OPERATOR, SLICE_MANAGED_BY
from tars_api.tarsmodel import ModelKind
from tars_operator import builders, metrics, requests, routing
from tars_operator.agents import LeaseRecord, NodeRecord, agent_views, lease_lost, lost_reason, node_label_patches
from tars_operator.autoscaler import Decision, Policy, decide, model_load
from tars_operator.conditions import merge_conditions, transitions
from tars_operator.decide import ModelFacts, ModelPlan, decide_model
from tars_operator.kube import Kube
from tars_operator.liveness import LeaseConfirmations
from tars_operator.placement import AgentView
from tars_operator.podfaults import PodRecord
from tars_operator.records import Key, Records, Slot, TarsModelRecord, TarsNodeRecord
from tars_operator.status import failure_conditions, tarsnode_status

log = logging.getLogger("tars_operator")
# After an operator start, how long placements on Ready nodes whose agents have not reported yet
# are kept: a whole-cluster restart brings agents back over tens of seconds, not all at once.
STARTUP_GRACE_S = 60.0
# A model's Service and EndpointSlices are applied again after this long (by the 30 s safety net):
# how long drift on them can last. Every 25 s, it was two requests per model per 30 s while idle.
REAPPLY_AFTER_S = 300.0
# Annotation on every child the operator applies: the digest of the object as it applied it.
APPLIED = f"{GROUP}/applied"
# The children an earlier operator process may have left, by kind: apiVersion and label selector.
_OURS = f"{MANAGED_BY}={OPERATOR}"
LEFT = {
    "Service": ("v1", _OURS),
    "EndpointSlice": ("discovery.k8s.io/v1", f"{SLICE_MANAGED_BY}={OPERATOR}"),
    "ServiceAccount": ("v1", _OURS),
    "Role": ("rbac.authorization.k8s.io/v1", _OURS),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", _OURS),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1", _OURS),
    "ConfigMap": ("v1", _OURS),
    "PodDisruptionBudget": ("policy/v1", _OURS),
    "DaemonSet": ("apps/v1", _OURS),
}


@dataclass
class Observed:
    """Snapshots of kopf's indexes, taken when a handler runs."""

    tarsnodes: dict[Key, dict[str, Any]]
    models: dict[Key, list[dict[str, Any]]]
    leases: dict[Key, list[LeaseRecord]]
    nodes: dict[str, NodeRecord]
    daemonsets: dict[Key, dict[str, Any]]

    def agents(self, key: Key, now: datetime | None = None) -> list[AgentView]:
        return agent_views(self.leases.get(key, []), self.nodes, now)

    def lost(self, key: Key) -> list[str]:
        now = datetime.now(UTC)
        return [r for lease in self.leases.get(key, []) if (r := lost_reason(lease, self.nodes, now))]


def _first(store: Iterable[Any] | None) -> Any:
    return next(iter(store), None) if store is not None else None


@dataclass(frozen=True)
class Indexes:
    """kopf's live indexes, as handlers receive them; a reconcile snapshots them when it starts."""

    tarsnodes: Mapping[Key, Collection[dict[str, Any]]]
    models: Mapping[Key, Collection[dict[str, Any]]]
    leases: Mapping[Key, Collection[LeaseRecord]]
    nodes: Mapping[str, Collection[NodeRecord]]
    daemonsets: Mapping[Key, Collection[dict[str, Any]]]

    def snapshot(self) -> Observed:
        return Observed(
            tarsnodes={k: _first(v) for k, v in self.tarsnodes.items()},
            models={k: list(v) for k, v in self.models.items()},
            leases={k: list(v) for k, v in self.leases.items()},
            nodes={k: _first(v) for k, v in self.nodes.items()},
            daemonsets={k: _first(v) for k, v in self.daemonsets.items()},
        )

    def model_snapshot(self, model: Key, node_key: Key) -> Observed:
        """What a model's reconcile reads: its TarsNode with that TarsNode's models and agents, and the
        Nodes (the whole snapshot when the model is not there: its nodeRef just changed). A whole
        snapshot per model, and finding the model among all, were most of the operator's CPU with
        1,000 models and nothing changing (the safety net reconciles each every 30 s)."""
        models = list(self.models.get(node_key, []))
        if not any(_key_of(body) == model for body in models):
            return self.snapshot()
        return Observed(
            tarsnodes={node_key: _first(self.tarsnodes[node_key])} if node_key in self.tarsnodes else {},
            models={node_key: models},
            leases={node_key: list(self.leases.get(node_key, []))},
            nodes={k: _first(v) for k, v in self.nodes.items()},
            daemonsets={},
        )

    def agents_snapshot(self, key: Key) -> Observed:
        """Only what agent liveness needs: the TarsNode's Leases and the Nodes. The liveness timer
        runs every second for every TarsNode; a whole snapshot each time was most of the idle CPU."""
        return Observed(
            tarsnodes={},
            models={},
            leases={key: list(self.leases.get(key, []))},
            nodes={k: _first(v) for k, v in self.nodes.items()},
            daemonsets={},
        )


def observed_load(tm: TarsModel, seen: Observed) -> float:
    """The model's load over all agents of its TarsNode with a current Lease, in the scaling metric
    (requests in flight, requests per second or tokens asked for)."""
    key = routing.model_key(tm)
    now = datetime.now(UTC)
    total = 0.0
    for lease in seen.leases.get((tm.metadata.namespace, tm.spec.node_ref.name), []):
        if lease_lost(lease, now):
            continue
        state = lease.report.models.get(key)
        if state is not None:
            total += model_load(tm.spec.scaling.metric, state)
    return total


def _fresh(tm: TarsModel) -> bool:
    """Never reconciled: nothing an earlier process applied for it can exist (an earlier model of that
    name, and what it owned, are gone or going)."""
    return tm.status is None or not tm.status.observed_generation


def _was_ready(body: dict[str, Any]) -> bool:
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _key_of(body: dict[str, Any]) -> Key:
    return body["metadata"].get("namespace", ""), body["metadata"].get("name", "")


def post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=type_, reason=reason, message=message)


class Reconciler:
    """Reconciles TarsNodes and TarsModels; what it remembers about each object is in its record."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.records = Records()
        self._started = time.monotonic()
        self._handled_requests: dict[tuple[Any, ...], None] = {}  # insertion-ordered, bounded
        self._detached: set[asyncio.Future[None]] = set()
        # (kind, namespace) -> name -> object: what an earlier process left, listed once.
        self._listings: dict[tuple[str, str | None], asyncio.Future[dict[str, dict[str, Any]]]] = {}
        self.agent_pods: dict[Key, dict[str, PodRecord]] = {}  # container states, per TarsNode
        self.terminating: set[str] = set()  # namespaces being deleted
        self.liveness = LeaseConfirmations(self._get_lease)

    def detach(self, work: Awaitable[None]) -> None:
        """Runs ``work`` without holding the caller. kopf handles one object's events one at a time,
        and indexes an event only when its turn comes: a TarsNode's own handler still reconciling kept
        its deletion out of the index, so the reconcile (woken again by the children the garbage
        collector removed) kept re-creating them. ``work`` never raises (see _coalesced)."""
        task = asyncio.ensure_future(work)
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)

    async def _coalesced(
        self, kind: str, key: Key, slot: Slot, run: Callable[[], Awaitable[None]], settle_s: float = 0.0
    ) -> None:
        """Runs ``run`` for the object, folding triggers that arrive meanwhile into one more run.
        ``settle_s`` waits first, so a burst (a TarsNode's children all created at once) is one run."""
        if slot.lock.locked():
            slot.dirty = True
            return
        async with slot.lock:
            if settle_s:
                await asyncio.sleep(settle_s)
            slot.dirty = True
            while slot.dirty:
                slot.dirty = False
                started = time.perf_counter()
                result = "success"
                try:
                    await run()
                except Exception:
                    # Already shown on the object (_contained); raising would stop the caller's loop
                    # over the other objects. The safety-net timer tries this one again.
                    result = "error"
                    log.exception("reconciling %s %s/%s failed", kind, *key)
                finally:
                    metrics.RECONCILIATIONS.labels(kind, result).inc()
                    metrics.RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)

    async def _contained(
        self, body: dict[str, Any], run: Callable[[], Awaitable[None]], record: TarsNodeRecord | TarsModelRecord
    ) -> None:
        """Runs one object's reconcile. A failure (a spec the schema should have refused, a change the
        API server refuses) is shown on that object, as status conditions and an Event, and stops
        nothing else: the other models of a TarsNode are still reconciled."""
        try:
            await run()
        except Exception as exc:
            try:
                generation = body["metadata"].get("generation", 0)
                await self._write_status(body, generation, {}, failure_conditions(exc), record)
            except Exception:
                log.exception("reporting the failure on %s/%s failed too", *_key_of(body))
            raise

    # --- TarsNode -------------------------------------------------------------------------------

    async def tarsnode(
        self, key: Key, seen_fn: Callable[[], Observed], *, children: bool = True, settle_s: float = 0.0
    ) -> None:
        """Reconciles a TarsNode. ``children=False`` when only its status can have changed (agents,
        its own status write): applying the children again would be a no-op costing eight requests."""
        record = self.records.tarsnode(key)
        record.children_stale |= children
        await self._coalesced(
            "TarsNode", key, record.slot, lambda: self._reconcile_tarsnode(key, record, seen_fn()), settle_s
        )

    def gone(self, body: dict[str, Any]) -> bool:
        """True for an object being deleted or in a namespace being deleted. Reconciling
        one there re-created children the API server refuses: with 1,000 models in it, every agent
        Lease removed reconciled them all, each failing and posting Events kopf retried nine times."""
        meta = body.get("metadata", {})
        return bool(meta.get("deletionTimestamp")) or meta.get("namespace") in self.terminating

    def namespace_seen(self, name: str, terminating: bool) -> None:
        (self.terminating.add if terminating else self.terminating.discard)(name)

    async def _reconcile_tarsnode(self, key: Key, record: TarsNodeRecord, seen: Observed) -> None:
        body = seen.tarsnodes.get(key)
        if body is None or self.gone(body):
            return
        await self._contained(body, lambda: self._reconcile_tarsnode_body(key, record, body, seen), record)

    async def _reconcile_tarsnode_body(
        self, key: Key, record: TarsNodeRecord, body: dict[str, Any], seen: Observed
    ) -> None:
        tn = TarsNode.model_validate(body)
        await self._confirm_leases(seen, key)
        spec_hash = builders.config_hash(tn) + str(tn.metadata.generation)
        if record.children_stale or record.applied_spec != spec_hash:
            # A child edited or deleted: all are applied again. Otherwise only those that differ from
            # what this process, or else an earlier one, applied: a restart with 100 TarsNodes sent
            # their 800 unchanged children again before the models' first requests.
            force, record.children_stale = record.children_stale, False
            fresh = not (body.get("status") or {}).get("observedGeneration")
            *supporting, daemonset = builders.desired_children(tn)
            if fresh:
                # Nothing of it exists, so no pod can start on a stale configuration (they wait for
                # their ConfigMap to mount): the DaemonSet, what a user waits for, goes ahead of every
                # other apply, with the ServiceAccount its pods' admission needs; the rest follows.
                first = [c for c in supporting if c["kind"] == "ServiceAccount"] + [daemonset]
                rest = [c for c in supporting if c not in first]
                await asyncio.gather(*(self._apply_if_changed(record, c, fresh, force, ahead=True) for c in first))
                await asyncio.gather(*(self._apply_if_changed(record, c, fresh, force) for c in rest))
            else:
                # Everything the agent pods use goes first, together; then the DaemonSet that rolls them.
                await asyncio.gather(*(self._apply_if_changed(record, c, fresh, force) for c in supporting))
                await self._apply_if_changed(record, daemonset, fresh, force)
            record.applied_spec = spec_hash
        agents = seen.agents(key)
        for node, patch in node_label_patches(agents, seen.nodes).items():
            await self.kube.patch("v1", "Node", None, node, patch)
        pods = list(self.agent_pods.get(key, {}).values())
        fields, conds = tarsnode_status(
            tn, seen.daemonsets.get(key), agents, seen.lost(key), pods=pods, nodes_total=len(seen.nodes)
        )
        for state, count in (("ready", sum(a.ready for a in agents)), ("lost", sum(not a.ready for a in agents))):
            metrics.AGENTS.labels(tn.metadata.name, state).set(count)
        await self._write_status(body, tn.metadata.generation, fields, conds, record)

    def own_status(self, kind: str, body: dict[str, Any]) -> bool:
        """True when ``body`` is the echo of the status this process just wrote: the reconcile that
        wrote it already acted on everything it shows."""
        key = _key_of(body)
        record = self.records.tarsnodes.get(key) if kind == "TarsNode" else self.records.models.get(key)
        version = body.get("metadata", {}).get("resourceVersion")
        return record is not None and version is not None and record.status_written == version

    async def models_of(self, node_key: Key, indexes: Indexes) -> None:
        """Reconciles every model of a TarsNode, all at once (each holds the TarsNode's placement lock
        only while deciding); an error of one stays with it (_contained)."""
        bodies = list(indexes.models.get(node_key, []))
        await asyncio.gather(*(self.tarsmodel(body, indexes) for body in bodies))

    async def agents_moved(self, key: Key, indexes: Indexes) -> None:
        """Brings a TarsNode's status and its models up to date when its usable agents, or what they
        hold, changed since the last look."""
        seen = indexes.agents_snapshot(key)
        await self._confirm_leases(seen, key)
        if self.agents_changed(key, seen):
            # Together: the models moving off a lost agent waited on the TarsNode's status write.
            await asyncio.gather(self.tarsnode(key, indexes.snapshot, children=False), self.models_of(key, indexes))

    def agents_changed(self, key: Key, seen: Observed) -> bool:
        """True when the set of usable agents, or what they hold, differs from last time asked."""
        fingerprint = tuple(
            (a.node, a.ready, a.address, a.capacity_mib, tuple(sorted(a.loaded))) for a in seen.agents(key)
        )
        record = self.records.tarsnode(key)
        changed = record.agents_fingerprint != fingerprint
        if changed:  # which agents left and came back is the first question after models moved
            was_ready = {entry[0]: entry[1] for entry in record.agents_fingerprint or ()}
            now = datetime.now(UTC)
            why = {lease.node: lost_reason(lease, seen.nodes, now) for lease in seen.leases.get(key, [])}
            for node, ready, *_ in fingerprint:
                if was_ready.get(node, ready) != ready:
                    log.info("%s/%s: agent on %s %s", *key, node, "usable" if ready else f"lost: {why.get(node)}")
        record.agents_fingerprint = fingerprint
        return changed

    def first_sight(self, key: Key) -> bool:
        record = self.records.tarsnode(key)
        first, record.seen = not record.seen, True
        return first

    def forget_tarsnode(self, key: Key) -> None:
        self.records.forget_tarsnode(key)
        self.agent_pods.pop(key, None)

    def agent_pod_seen(self, key: Key, name: str, record: PodRecord | None) -> bool:
        """Remembers an agent pod's container state (None: the pod is gone). True when it changed,
        so the TarsNode's PodsHealthy condition should follow."""
        pods = self.agent_pods.setdefault(key, {})
        before = pods.pop(name, None)
        if record is not None:
            pods[name] = record
        return before != record

    # --- TarsModel: observe -> decide (decide.py, pure) -> act -----------------------------------

    async def tarsmodel(self, body: dict[str, Any], indexes: Indexes) -> None:
        key = _key_of(body)
        record = self.records.model(key)
        node_key = (key[0], (body.get("spec") or {}).get("nodeRef", {}).get("name", ""))
        seen_fn = functools.partial(indexes.model_snapshot, key, node_key)
        await self._coalesced("TarsModel", key, record.slot, lambda: self._reconcile_tarsmodel(key, record, seen_fn()))

    def _model_body(self, key: Key, seen: Observed) -> dict[str, Any] | None:
        for bodies in seen.models.values():
            for body in bodies:
                if _key_of(body) == key:
                    return body
        return None

    async def _reconcile_tarsmodel(self, key: Key, record: TarsModelRecord, seen: Observed) -> None:
        body = self._model_body(key, seen)
        if body is None or self.gone(body):
            return
        await self._contained(body, lambda: self._reconcile_tarsmodel_body(record, body, seen), record)

    async def _reconcile_tarsmodel_body(self, record: TarsModelRecord, body: dict[str, Any], seen: Observed) -> None:
        tm = TarsModel.model_validate(body)
        problem = None
        if tm.spec.kind == ModelKind.FUNCTION:
            # Only a function's check can read a ConfigMap, so only it goes to a thread: after a restart
            # with 1,000 models, every model queued there behind its TarsNode's applies (66.8 s).
            read_configmap = functools.partial(self.kube.get_sync, "v1", "ConfigMap")
            problem = await asyncio.to_thread(validate_function, tm.spec, tm.metadata.namespace, read_configmap)
        node_key = (tm.metadata.namespace, tm.spec.node_ref.name)
        await self._confirm_leases(seen, node_key)
        # No record for a TarsNode that does not exist: nothing would ever forget it.
        node = self.records.tarsnode(node_key) if node_key in seen.tarsnodes else TarsNodeRecord()
        # One model of a TarsNode at a time from observing to recording its placements, so each
        # sees the memory the others were just given.
        async with node.placement_lock:
            plan = decide_model(tm, self._observe_model(tm, node, seen, problem))
            if plan.placements is not None:
                node.placed[routing.model_key(tm)] = (plan.placements, tm.spec.memory_mi_b)
        await self._act_on_model(tm, record, body, plan)

    def _observe_model(self, tm: TarsModel, node: TarsNodeRecord, seen: Observed, problem: str | None) -> ModelFacts:
        node_key = (tm.metadata.namespace, tm.spec.node_ref.name)
        mine = routing.model_key(tm)
        # What this process placed last, where it has: the status in the index trails the status write.
        # Placing again from the older status (none, for a new model) moved models just placed: at 100
        # models, every agent's report woke every model, and the first placements swapped between agents.
        decided = node.placed.get(mine)
        if decided is not None:
            current = dict(decided[0])
        else:
            current = {p.node: p.replicas for p in tm.status.placements} if tm.status else {}
        if problem is not None or seen.tarsnodes.get(node_key) is None:
            return ModelFacts(tarsnode_found=seen.tarsnodes.get(node_key) is not None, current=current, problem=problem)
        agents = seen.agents(node_key)
        agents += self._awaited_agents(current, agents, seen)
        used: dict[str, int] = {}
        for other in seen.models.get(node_key, []):
            other_key = "/".join(_key_of(other))
            if other_key == mine:
                continue
            if other_key in node.placed:
                placements, memory = node.placed[other_key]
            else:
                placements = {
                    p["node"]: p.get("replicas", 1) for p in (other.get("status") or {}).get("placements", [])
                }
                memory = (other.get("spec") or {}).get("memoryMiB", 0)
            for name, count in placements.items():
                used[name] = used.get(name, 0) + count * memory
        errors = {
            lease.node: state.error
            for lease in seen.leases.get(node_key, [])
            if (state := lease.report.models.get(mine)) is not None and state.error
        }
        return ModelFacts(True, agents, current, used, errors)

    def _awaited_agents(self, current: dict[str, int], agents: list[AgentView], seen: Observed) -> list[AgentView]:
        """Agents this operator process has not heard from yet, on Ready nodes holding placements.

        Right after the operator starts (or everything restarts), agents report one by one; for
        STARTUP_GRACE_S their placements stay put instead of piling onto the first agent that
        reports. A NotReady node gets no such grace."""
        if time.monotonic() - self._started > STARTUP_GRACE_S:
            return []
        reported = {a.node for a in agents}
        return [
            AgentView(node=node, ready=True, capacity_mib=2**31, accepts_new=False)
            for node in current
            if node not in reported and (record := seen.nodes.get(node)) is not None and record.ready
        ]

    async def _act_on_model(
        self, tm: TarsModel, record: TarsModelRecord, body: dict[str, Any], plan: ModelPlan
    ) -> None:
        if plan.unplaced:
            metrics.PLACEMENT_FAILURES.labels(routing.model_key(tm)).inc()
        for type_, reason, message in plan.events:
            post_event(body, type_, reason, message)

        def routed() -> Awaitable[Any]:
            return asyncio.gather(
                *(self._apply_if_changed(record, obj, fresh=_fresh(tm)) for obj in plan.children),
                self._prune_slices(tm, record, plan.slice_names),
            )

        def status() -> Awaitable[None]:
            return self._write_status(body, tm.metadata.generation, plan.fields, plan.conditions, record)

        if plan.ready and not _was_ready(body):
            # Routing first: a status that turns Ready announces a model callers reach.
            await routed()
            await status()
        else:
            # Nothing newly announced, so nothing waits: the placements go first (agents start loading
            # on them), their request queued ahead of the routing's. Behind the routing, they waited on
            # a new model's Service (a ClusterIP allocation took 2.9 s mean with 200 models arriving),
            # and after a lost agent with 68 models, on 136 slice requests (moved 16.4 s after the kill).
            written = asyncio.ensure_future(status())  # scheduled before the routing's tasks are
            await asyncio.gather(written, routed())

    async def _apply_if_changed(
        self,
        record: TarsNodeRecord | TarsModelRecord,
        obj: dict[str, Any],
        fresh: bool,
        force: bool = False,
        ahead: bool = False,
    ) -> None:
        """Server-side applies ``obj`` unless this process applied the same object less than
        REAPPLY_AFTER_S ago (or, ``force`` aside, an earlier process left it so). A model is reconciled
        on every status change of its own; re-sending unchanged children each time cost more requests
        than anything else. Drift on a model's children is repaired within REAPPLY_AFTER_S plus the
        30 s of the safety net that reconciles every model; on a TarsNode's, their watch events
        bring it back (child_changed)."""
        meta = obj["metadata"]
        key = (obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:32]
        now = time.monotonic()
        last = record.applied.get(key)
        if last is None and not fresh and not force and await self._applied_before(obj) == digest:
            # Applied so by an earlier operator process (the digest covers the owner's uid): after a
            # restart with 1,000 models, it sent 2,000 unchanged Services and slices again.
            last = record.applied[key] = (digest, now)
        if not force and last is not None and last[0] == digest and now - last[1] < REAPPLY_AFTER_S:
            return
        annotations = {**meta.get("annotations", {}), APPLIED: digest}
        await self.kube.apply({**obj, "metadata": {**meta, "annotations": annotations}}, ahead=ahead)
        record.applied[key] = (digest, now)

    async def _applied_before(self, obj: dict[str, Any]) -> str | None:
        left = await self._left(obj["kind"], obj["metadata"].get("namespace"))
        meta = (left.get(obj["metadata"]["name"]) or {}).get("metadata", {})
        found: str | None = (meta.get("annotations") or {}).get(APPLIED)
        return found

    async def _prune_slices(self, tm: TarsModel, record: TarsModelRecord, keep: set[str]) -> None:
        """Deletes slices no longer wanted. What a previous process left is listed once per namespace
        per operator process (one list per model was a tenth of a restart's requests); after that, what
        this process applied is known. A model never reconciled before has no slices of its own: any
        left by an earlier model of that name are owned by it and go with it (garbage collection)."""
        namespace = tm.metadata.namespace
        if record.slices is None:
            left = {} if _fresh(tm) else await self._left("EndpointSlice", namespace)
            mine = tm.metadata.name
            record.slices = {n for n, s in left.items() if (s["metadata"].get("labels") or {}).get(MODEL_LABEL) == mine}
        for name in record.slices - keep:
            await self.kube.delete("discovery.k8s.io/v1", "EndpointSlice", namespace, name)
            record.applied.pop(("discovery.k8s.io/v1", "EndpointSlice", namespace, name), None)
        record.slices = set(keep)

    async def _left(self, kind: str, namespace: str | None) -> dict[str, dict[str, Any]]:
        """Name -> object of a child kind in a namespace, as the first asker in this process
        listed it: one list per namespace, not one per model (that was a tenth of a restart's
        requests), and no watch (kopf's start with 2,000 more objects indexed took longer than the
        applies it saved)."""
        if (kind, namespace) not in self._listings:
            self._listings[kind, namespace] = asyncio.ensure_future(self._list_left(kind, namespace))
        return await asyncio.shield(self._listings[kind, namespace])

    async def _list_left(self, kind: str, namespace: str | None) -> dict[str, dict[str, Any]]:
        api_version, selector = LEFT[kind]
        try:
            items = await self.kube.list(api_version, kind, namespace, selector)
        except Exception:
            self._listings.pop((kind, namespace), None)  # the next asker lists again
            raise
        return {item["metadata"]["name"]: item for item in items}

    def forget_model(self, namespace: str, name: str, tarsnode: str) -> None:
        self.records.forget_model((namespace, name), tarsnode)

    # --- autoscaling ----------------------------------------------------------------------------

    async def autoscale(self, body: dict[str, Any], seen: Observed, now: float | None = None) -> Decision:
        tm = TarsModel.model_validate(body)
        key = (tm.metadata.namespace, tm.metadata.name)
        policy = Policy.from_spec(tm.spec.scaling)
        now = time.monotonic() if now is None else now
        history = self.records.model(key).history
        history.add(now, observed_load(tm, seen), keep_s=policy.stable_window_s)
        decision = decide(history, now, tm.spec.replicas, policy)
        report = {
            "observedLoad": round(decision.stable_load, 2),
            "desiredReplicas": decision.desired,
            "mode": decision.mode,
        }
        # The explanation lands before the new replica count, so whoever sees the count sees why.
        if (body.get("status") or {}).get("autoscaler") != report:
            await self.kube.patch_status(API_VERSION, "TarsModel", *key, {"autoscaler": report})
        if decision.desired != tm.spec.replicas:
            await self.kube.scale(API_VERSION, "TarsModel", *key, decision.desired)
            post_event(body, "Normal", "Scaled", decision.explain(tm.spec.replicas))
        return decision

    # --- requests from guests (operator.request) -------------------------------------------------

    async def operator_requests(self, lease: LeaseRecord, seen: Observed) -> None:
        now = time.time()
        for request in lease.report.requests:
            handled = (lease.namespace, lease.node, request.get("id"), request.get("at"))
            if handled in self._handled_requests or now - float(request.get("at") or 0) > requests.MAX_AGE_S:
                continue
            self._handled_requests[handled] = None
            while len(self._handled_requests) > 10_000:
                self._handled_requests.pop(next(iter(self._handled_requests)))
            target = self._model_body((lease.namespace, str(request.get("model", ""))), seen)
            verdict = requests.decide_request(request, lease.namespace, target)
            if verdict.accepted and target is not None and verdict.replicas is not None:
                await self.kube.scale(
                    API_VERSION, "TarsModel", lease.namespace, target["metadata"]["name"], verdict.replicas
                )
            requester = str(request.get("from", "")).rsplit("/", 1)[-1]
            subject = target or self._model_body((lease.namespace, requester), seen)
            log.info("operator request from the agent on %s: %s", lease.node, verdict.message)
            if subject is not None:
                post_event(
                    subject,
                    "Normal" if verdict.accepted else "Warning",
                    "RequestAccepted" if verdict.accepted else "RequestRefused",
                    verdict.message,
                )

    # --- shared ---------------------------------------------------------------------------------

    async def _confirm_leases(self, seen: Observed, key: Key) -> None:
        """The TarsNode's Leases in ``seen`` as the API server has them, where the index's look expired
        (liveness.py): no model moves off an agent whose renewal the index has not caught up with."""
        if key in seen.leases:
            seen.leases[key] = await self.liveness.confirm(seen.leases[key])

    async def _get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.kube.get_sync, "coordination.k8s.io/v1", "Lease", namespace, name)

    async def _write_status(
        self,
        body: dict[str, Any],
        generation: int,
        fields: dict[str, Any],
        conds: list[Any],
        record: TarsNodeRecord | TarsModelRecord,
    ) -> None:
        old = body.get("status") or {}
        conditions = merge_conditions(old.get("conditions", []), conds, generation)
        status = {**fields, "conditions": conditions, "observedGeneration": generation}
        if all(old.get(k) == v for k, v in status.items()):
            return  # nothing changed: no write, no new watch event, no loop
        for cond in transitions(old.get("conditions", []), conditions):
            if cond["type"] in ("Ready", "Degraded") and (old.get("conditions") or cond["status"] == "True"):
                bad = (cond["type"] == "Degraded") == (cond["status"] == "True")
                message = cond["message"] or f"{cond['type']}={cond['status']}"
                post_event(body, "Warning" if bad else "Normal", cond["reason"], message)
        meta = body["metadata"]
        written = await self.kube.patch_status(API_VERSION, body["kind"], meta["namespace"], meta["name"], status)
        if written is not None:
            record.status_written = written.get("metadata", {}).get("resourceVersion")
