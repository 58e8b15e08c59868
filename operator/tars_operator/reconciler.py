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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from pydantic import ValidationError

from tars_api import API_VERSION, TarsModel, TarsNode
from tars_api.functions import validate_function
from tars_api.labels import (
    MANAGED_BY,
    MODEL_LABEL,
    NAMESPACE_LABEL,
    OPERATOR,
    SLICE_MANAGED_BY,
    TARSNODE_LABEL,
)
from tars_api.lease import lease_expired, parse_agent_annotations
from tars_operator import builders, metrics, requests, routing
from tars_operator.agents import LeaseRecord, NodeRecord, agent_views, lost_reason, node_label_patches
from tars_operator.autoscaler import Decision, History, Policy, decide
from tars_operator.conditions import Cond, merge_conditions, transitions
from tars_operator.kube import Kube
from tars_operator.placement import AgentView, place
from tars_operator.status import ModelObservation, invalid_function_status, tarsmodel_status, tarsnode_status

log = logging.getLogger("tars_operator")
# After an operator start, how long placements on Ready nodes whose agents have not reported yet
# are kept: a whole-cluster restart brings agents back over tens of seconds, not all at once.
STARTUP_GRACE_S = 60.0
REAPPLY_AFTER_S = 25.0
Key = tuple[str, str]


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


def observed_from(indexes: dict[str, Any]) -> Observed:
    return Observed(
        tarsnodes={k: _first(v) for k, v in indexes["tarsnodes_index"].items()},
        models={k: list(v) for k, v in indexes["models_index"].items()},
        leases={k: list(v) for k, v in indexes["leases_index"].items()},
        nodes={k: _first(v) for k, v in indexes["nodes_index"].items()},
        daemonsets={k: _first(v) for k, v in indexes["daemonsets_index"].items()},
    )


def observed_load(tm: TarsModel, seen: Observed) -> float:
    """The model's load over all agents of its TarsNode with a current Lease: requests in flight, or
    requests per second, as the scaling metric says."""
    key = routing.model_key(tm)
    now = datetime.now(UTC)
    total = 0.0
    for lease in seen.leases.get((tm.metadata.namespace, tm.spec.node_ref.name), []):
        if lease_expired(lease.renew_time, lease.duration_s, now):
            continue
        state = parse_agent_annotations(lease.annotations).models.get(key)
        if state is not None:
            total += state.rps if tm.spec.scaling.metric == "rps" else state.in_flight
    return total


def post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=type_, reason=reason, message=message)


@dataclass
class _Slot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    dirty: bool = False


class Reconciler:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._slots: dict[tuple[str, Key], _Slot] = {}
        self._placement_locks: dict[Key, asyncio.Lock] = {}
        # Placements decided by this process and not yet seen back through the watch, per TarsNode.
        self._placed: dict[Key, dict[str, tuple[dict[str, int], int]]] = {}
        self._agent_fingerprints: dict[Key, Any] = {}
        self._histories: dict[Key, History] = {}
        self._known_tarsnodes: set[Key] = set()
        self._started = time.monotonic()
        self._handled_requests: dict[tuple[Any, ...], None] = {}  # insertion-ordered, bounded
        self._children_stale: set[Key] = set()  # a child changed: apply all children again
        self._applied_specs: dict[Key, str] = {}  # TarsNode spec last applied, per TarsNode
        self._applied_objects: dict[tuple[Any, ...], tuple[str, float]] = {}  # digest, when
        self._slices: dict[Key, set[str]] = {}  # slice names applied last time, per model

    async def _coalesced(self, kind: str, key: Key, run: Callable[[], Awaitable[None]], settle_s: float = 0.0) -> None:
        """Runs ``run`` for the object, folding triggers that arrive meanwhile into one more run.
        ``settle_s`` waits first, so a burst (a TarsNode's children all created at once) is one run."""
        slot = self._slots.setdefault((kind, key), _Slot())
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
                    result = "error"
                    log.exception("reconciling %s %s/%s failed", kind, *key)
                    raise
                finally:
                    metrics.RECONCILIATIONS.labels(kind, result).inc()
                    metrics.RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)

    # --- TarsNode -------------------------------------------------------------------------------

    async def tarsnode(
        self, key: Key, seen_fn: Callable[[], Observed], *, children: bool = True, settle_s: float = 0.0
    ) -> None:
        """Reconciles a TarsNode. ``children=False`` when only its status can have changed (agents,
        its own status write): applying the children again would be a no-op costing eight requests."""
        if children:
            self._children_stale.add(key)
        await self._coalesced("TarsNode", key, lambda: self._reconcile_tarsnode(key, seen_fn()), settle_s)

    async def _reconcile_tarsnode(self, key: Key, seen: Observed) -> None:
        body = seen.tarsnodes.get(key)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return
        tn = TarsNode.model_validate(body)
        spec_hash = builders.config_hash(tn) + str(tn.metadata.generation)
        if key in self._children_stale or self._applied_specs.get(key) != spec_hash:
            self._children_stale.discard(key)
            *supporting, daemonset = builders.desired_children(tn)
            # Everything the agent pods use goes first, together; then the DaemonSet that starts them.
            await asyncio.gather(*(self.kube.apply(child) for child in supporting))
            await self.kube.apply(daemonset)
            self._applied_specs[key] = spec_hash
        agents = seen.agents(key)
        for node, patch in node_label_patches(agents, seen.nodes).items():
            await self.kube.patch("v1", "Node", None, node, patch)
        fields, conds = tarsnode_status(tn, seen.daemonsets.get(key), agents, seen.lost(key))
        for state, count in (("ready", sum(a.ready for a in agents)), ("lost", sum(not a.ready for a in agents))):
            metrics.AGENTS.labels(tn.metadata.name, state).set(count)
        await self._write_status(body, tn.metadata.generation, fields, conds)

    # --- TarsModel ------------------------------------------------------------------------------

    async def tarsmodel(self, body: dict[str, Any], seen_fn: Callable[[], Observed]) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        await self._coalesced("TarsModel", key, lambda: self._reconcile_tarsmodel(key, seen_fn()))

    def _model_body(self, key: Key, seen: Observed) -> dict[str, Any] | None:
        for bodies in seen.models.values():
            for body in bodies:
                if (body["metadata"]["namespace"], body["metadata"]["name"]) == key:
                    return body
        return None

    async def _reconcile_tarsmodel(self, key: Key, seen: Observed) -> None:
        body = self._model_body(key, seen)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return
        try:
            tm = TarsModel.model_validate(body)
        except ValidationError as exc:  # the schema should have stopped it; say so, do not crash-loop
            message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())[:1000]
            invalid = [Cond("Ready", False, "InvalidSpec", message), Cond("Degraded", True, "InvalidSpec", message)]
            await self._write_status(body, body["metadata"].get("generation", 0), {}, invalid)
            return
        node_key = (tm.metadata.namespace, tm.spec.node_ref.name)
        read_configmap = functools.partial(self.kube.get_sync, "v1", "ConfigMap")
        problem = await asyncio.to_thread(validate_function, tm.spec, tm.metadata.namespace, read_configmap)
        if problem is not None:  # a bad function is placed nowhere, so no agent loads it
            self._placed.get(node_key, {}).pop(routing.model_key(tm), None)
            await self._prune_slices(tm, set())
            await self._write_status(body, tm.metadata.generation, *invalid_function_status(tm, problem))
            return
        lock = self._placement_locks.setdefault(node_key, asyncio.Lock())
        async with lock:
            observation = self._observe_model(tm, node_key, seen)
            if observation.result is not None:
                placed = self._placed.setdefault(node_key, {})
                placed[routing.model_key(tm)] = (observation.result.placements, tm.spec.memory_mi_b)
        slices = routing.desired_endpointslices(
            tm, observation.result.placements if observation.result else {}, observation.agents
        )
        await asyncio.gather(*(self._apply_if_changed(obj) for obj in (routing.desired_model_service(tm), *slices)))
        await self._prune_slices(tm, {s["metadata"]["name"] for s in slices})
        fields, conds = tarsmodel_status(tm, observation)
        if observation.result and observation.result.unplaced:
            metrics.PLACEMENT_FAILURES.labels(routing.model_key(tm)).inc()
        previous = {p.node for p in tm.status.placements} if tm.status else set()
        now_on = set(observation.result.placements) if observation.result else set()
        if previous and now_on != previous:
            post_event(body, "Normal", "Placed", f"placements {sorted(previous)} -> {sorted(now_on)}")
        await self._write_status(body, tm.metadata.generation, fields, conds)

    def _observe_model(self, tm: TarsModel, node_key: Key, seen: Observed) -> ModelObservation:
        if seen.tarsnodes.get(node_key) is None:
            return ModelObservation(False, [], None, {})
        agents = seen.agents(node_key)
        mine = routing.model_key(tm)
        current = {p.node: p.replicas for p in tm.status.placements} if tm.status else {}
        agents += self._awaited_agents(current, agents, seen)
        used: dict[str, int] = {}
        placed_here = self._placed.get(node_key, {})
        for other in seen.models.get(node_key, []):
            other_key = f"{other['metadata']['namespace']}/{other['metadata']['name']}"
            if other_key == mine:
                continue
            if other_key in placed_here:
                placements, memory = placed_here[other_key]
            else:
                placements = {
                    p["node"]: p.get("replicas", 1) for p in (other.get("status") or {}).get("placements", [])
                }
                memory = (other.get("spec") or {}).get("memoryMiB", 0)
            for node, count in placements.items():
                used[node] = used.get(node, 0) + count * memory
        warm = frozenset(a.node for a in agents if mine in a.loaded)
        result = place(tm.spec.replicas, tm.spec.memory_mi_b, current, agents, used, warm)
        errors = {}
        for lease in seen.leases.get(node_key, []):
            state = parse_agent_annotations(lease.annotations).models.get(mine)
            if state is not None and state.error:
                errors[lease.node] = state.error
        return ModelObservation(True, agents, result, errors)

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

    async def _apply_if_changed(self, obj: dict[str, Any]) -> None:
        """Server-side applies ``obj`` unless this process applied the same object less than
        REAPPLY_AFTER_S ago. A model is reconciled on every status change of its own; re-sending
        unchanged children each time cost more requests than anything else. Drift on them is
        repaired within REAPPLY_AFTER_S (the 30 s safety net reconciles every model)."""
        meta = obj["metadata"]
        key = (obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
        now = time.monotonic()
        last = self._applied_objects.get(key)
        if last is not None and last[0] == digest and now - last[1] < REAPPLY_AFTER_S:
            return
        await self.kube.apply(obj)
        self._applied_objects[key] = (digest, now)

    async def _prune_slices(self, tm: TarsModel, keep: set[str]) -> None:
        """Deletes slices no longer wanted. The API is asked once per model per operator process
        (slices a previous process left); after that, what this process applied is known."""
        key = (tm.metadata.namespace, tm.metadata.name)
        if key not in self._slices:
            selector = f"{MODEL_LABEL}={tm.metadata.name},{SLICE_MANAGED_BY}={OPERATOR}"
            existing = await self.kube.list("discovery.k8s.io/v1", "EndpointSlice", tm.metadata.namespace, selector)
            self._slices[key] = {item["metadata"]["name"] for item in existing}
        for name in self._slices[key] - keep:
            await self.kube.delete("discovery.k8s.io/v1", "EndpointSlice", tm.metadata.namespace, name)
            self._applied_objects.pop(("discovery.k8s.io/v1", "EndpointSlice", tm.metadata.namespace, name), None)
        self._slices[key] = set(keep)

    async def sweep_orphan_bindings(self) -> None:
        rbac, kind = "rbac.authorization.k8s.io/v1", "ClusterRoleBinding"
        selector = f"{MANAGED_BY}={OPERATOR},{TARSNODE_LABEL}"
        bindings = await self.kube.list(rbac, kind, None, selector)
        alive = {
            (t["metadata"]["namespace"], t["metadata"]["name"])
            for t in await self.kube.list(API_VERSION, "TarsNode", None)
        }
        for binding in bindings:
            labels = binding["metadata"].get("labels") or {}
            if (labels.get(NAMESPACE_LABEL), labels.get(TARSNODE_LABEL)) not in alive:
                log.info("removing %s: its TarsNode is gone", binding["metadata"]["name"])
                await self.kube.delete(rbac, kind, None, binding["metadata"]["name"])

    def first_sight(self, key: Key) -> bool:
        if key in self._known_tarsnodes:
            return False
        self._known_tarsnodes.add(key)
        return True

    def forget_tarsnode(self, key: Key) -> None:
        self._known_tarsnodes.discard(key)
        self._applied_specs.pop(key, None)
        self._agent_fingerprints.pop(key, None)

    def forget_model(self, namespace: str, name: str, tarsnode: str) -> None:
        self._placed.get((namespace, tarsnode), {}).pop(f"{namespace}/{name}", None)
        self._histories.pop((namespace, name), None)
        self._slices.pop((namespace, name), None)

    # --- autoscaling ----------------------------------------------------------------------------

    async def autoscale(self, body: dict[str, Any], seen: Observed, now: float | None = None) -> Decision:
        tm = TarsModel.model_validate(body)
        key = (tm.metadata.namespace, tm.metadata.name)
        policy = Policy.from_spec(tm.spec.scaling)
        now = time.monotonic() if now is None else now
        history = self._histories.setdefault(key, History())
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
        for request in parse_agent_annotations(lease.annotations).requests:
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

    async def _write_status(
        self, body: dict[str, Any], generation: int, fields: dict[str, Any], conds: list[Any]
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
        await self.kube.patch_status(API_VERSION, body["kind"], meta["namespace"], meta["name"], status)

    def agents_changed(self, key: Key, seen: Observed) -> bool:
        """True when the set of usable agents, or what they hold, differs from last time asked."""
        fingerprint = tuple(
            (a.node, a.ready, a.address, a.capacity_mib, tuple(sorted(a.loaded))) for a in seen.agents(key)
        )
        changed = self._agent_fingerprints.get(key) != fingerprint
        self._agent_fingerprints[key] = fingerprint
        return changed
