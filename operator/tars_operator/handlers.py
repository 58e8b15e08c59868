"""kopf wiring: indexes of what the operator watches, and thin handlers that call the reconciler.

Operator-wide state is kopf's memo, an :class:`OperatorMemo` that main.py hands to kopf.operator
(every handler gets a shallow copy, so all share one reconciler); the indexes arrive as typed
handler arguments.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf

from tars_api import GROUP, VERSION
from tars_api.labels import AGENT_APP, MANAGED_BY, NAME, NAMESPACE_LABEL, OPERATOR, TARSNODE_LABEL
from tars_operator import builders
from tars_operator.agents import LeaseRecord, NodeRecord, lease_record, next_expiry_s, node_record
from tars_operator.kube import API_CONCURRENCY, written_last_by
from tars_operator.metrics import MANAGED
from tars_operator.podfaults import pod_record
from tars_operator.reconciler import Indexes, Reconciler
from tars_operator.records import Key

log = logging.getLogger("tars_operator")
# The chart names the peering object; both replicas of one release must use the same name.
PEERING_NAME = os.environ.get("TARS_OPERATOR_PEERING_NAME", "tars")
CHILD_KINDS = [
    ("apps", "v1", "daemonsets"),
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("", "v1", "serviceaccounts"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    ("policy", "v1", "poddisruptionbudgets"),
]
RBAC = "rbac.authorization.k8s.io/v1"
# A Lease counts as expired once strictly older than its duration: look just after that moment.
EXPIRY_MARGIN_S = 0.05
# The longest the agents daemon sleeps: a Lease that appears meanwhile is seen by then, well before
# it could expire (8 s), so its expiry is not missed.
AGENTS_RECHECK_S = 2.0

Bodies = kopf.Index[Key, dict[str, Any]]
Leases = kopf.Index[Key, LeaseRecord]
Nodes = kopf.Index[str, NodeRecord]


@dataclass
class OperatorMemo:
    """Operator-wide state, kept in kopf's memo."""

    reconciler: Reconciler


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: OperatorMemo, **_: Any) -> None:
    # The kubernetes client blocks; its calls run in threads, as many as it has connections.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(API_CONCURRENCY, "kube"))
    # Progress and diff-base would be annotations under our own prefix; the handlers below are
    # level-based (events and timers), so kopf has nothing to store on the objects.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/operator"
    # Only warnings from kopf's own log become Events; the operator posts its meaningful Events itself.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.batch_window = 0.05
    # Two replicas with kopf peering: the higher priority acts, the other waits (main.py gives each
    # process its priority). Peering stays mandatory, as kopf.operator(peering_name=...) set it: a
    # replica then starts paused and acts only once it has read the peering object and found no
    # higher peer, so one joining an active replica never acts, not even for a moment.
    settings.peering.lifetime = int(os.environ.get("TARS_PEERING_LIFETIME", "20"))
    if not settings.peering.standalone and settings.peering.clusterwide:
        kube = memo.reconciler.kube
        if await asyncio.to_thread(kube.get_sync, "kopf.dev/v1", "ClusterKopfPeering", None, PEERING_NAME) is None:
            log.warning("no ClusterKopfPeering %r: paused until it exists (or run with --standalone)", PEERING_NAME)


# --- indexes ---------------------------------------------------------------------------------------
# Coroutines although they never wait: kopf runs a plain function in its thread pool, one hop per
# watch event, queued behind whatever else holds the pool's threads.


@kopf.index(GROUP, VERSION, "tarsnodes")
async def tarsnodes_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, name): dict(body)}


@kopf.index(GROUP, VERSION, "tarsmodels")
async def models_index(namespace: str, spec: kopf.Spec, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, spec.get("nodeRef", {}).get("name", "")): dict(body)}


@kopf.index("coordination.k8s.io", "v1", "leases", labels={NAME: AGENT_APP})
async def leases_index(body: kopf.Body, **_: Any) -> dict[Key, LeaseRecord] | None:
    record = lease_record(body)
    return {(record.namespace, record.tarsnode): record} if record else None


@kopf.index("", "v1", "nodes")
async def nodes_index(name: str, body: kopf.Body, **_: Any) -> dict[str, NodeRecord]:
    return {name: node_record(body)}


@kopf.index("apps", "v1", "daemonsets", labels={MANAGED_BY: OPERATOR})
async def daemonsets_index(
    namespace: str, labels: kopf.Labels, status: kopf.Status, **_: Any
) -> dict[Key, dict[str, Any]]:
    return {(namespace, labels.get(TARSNODE_LABEL, "")): dict(status)}


def _indexes(tarsnodes: Bodies, models: Bodies, leases: Leases, nodes: Nodes, daemonsets: Bodies) -> Indexes:
    return Indexes(tarsnodes, models, leases, nodes, daemonsets)


# --- TarsNode --------------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "tarsnodes")
async def tarsnode_changed(
    type: str, body: kopf.Body, namespace: str, name: str, memo: OperatorMemo,
    tarsnodes_index: Bodies, models_index: Bodies, leases_index: Leases, nodes_index: Nodes, daemonsets_index: Bodies,
    **_: Any,
) -> None:  # fmt: skip
    MANAGED.labels("TarsNode").set(len(tarsnodes_index))
    reconciler, key = memo.reconciler, (namespace, name)
    if reconciler.own_status("TarsNode", dict(body)):
        return
    if type == "DELETED":
        reconciler.forget_tarsnode(key)
        # Owner references let the garbage collector remove the namespaced children; the
        # cluster-scoped auth binding cannot be owned, so it goes here (and in the orphan sweep).
        await reconciler.kube.delete(RBAC, "ClusterRoleBinding", None, builders.auth_binding_name(namespace, name))
        return
    indexes = _indexes(tarsnodes_index, models_index, leases_index, nodes_index, daemonsets_index)
    reconciler.detach(reconciler.tarsnode(key, indexes.snapshot, children=False))
    if reconciler.first_sight(key):
        # Models waiting for this node (NodeNotFound) can be placed now. Later changes of the node
        # reach its models through the agents (Leases), not through its own status updates.
        reconciler.detach(reconciler.models_of(key, indexes))


def _child_event(group: str, version: str, plural: str) -> None:
    @kopf.on.event(
        group, version, plural, labels={MANAGED_BY: OPERATOR, TARSNODE_LABEL: kopf.PRESENT}, id=f"child-{plural}"
    )
    async def child_changed(
        type: str, body: kopf.Body, namespace: str, labels: kopf.Labels, memo: OperatorMemo,
        tarsnodes_index: Bodies, models_index: Bodies, leases_index: Leases, nodes_index: Nodes,
        daemonsets_index: Bodies, **_: Any,
    ) -> None:  # fmt: skip
        # A child edited or deleted by hand brings the owner back to spec; the DaemonSet's status
        # moving, its status.
        key = (namespace, labels[TARSNODE_LABEL])
        # Each child the operator creates echoes back here; re-applying all eight on every echo was
        # most of a new TarsNode's requests.
        edited = type == "DELETED" or not written_last_by(dict(body))
        if key in tarsnodes_index and (edited or plural == "daemonsets"):
            indexes = _indexes(tarsnodes_index, models_index, leases_index, nodes_index, daemonsets_index)
            # A status moving comes in bursts (the DaemonSet's, as its pods start): one write per second.
            await memo.reconciler.tarsnode(key, indexes.snapshot, children=edited, settle_s=0.2 if edited else 1.0)


for _group, _version, _plural in CHILD_KINDS:
    _child_event(_group, _version, _plural)


@kopf.daemon(GROUP, VERSION, "tarsnodes", id="agents-watch", cancellation_timeout=5.0)
async def watch_agents(
    namespace: str, name: str, memo: OperatorMemo, stopped: kopf.DaemonStopped,
    tarsnodes_index: Bodies, models_index: Bodies, leases_index: Leases, nodes_index: Nodes, daemonsets_index: Bodies,
    **_: Any,
) -> None:  # fmt: skip
    """Lease expiry makes no watch event, so the daemon sleeps until the TarsNode's next Lease would
    expire and looks again. A 1 s timer per TarsNode did the same by polling: 100 kopf handler runs a
    second at 100 TarsNodes, and up to a second late. A daemon, not one operator-wide loop: kopf
    stops daemons while peering pauses this replica."""
    key = (namespace, name)
    while not stopped:
        indexes = _indexes(tarsnodes_index, models_index, leases_index, nodes_index, daemonsets_index)
        await memo.reconciler.agents_moved(key, indexes)
        leases = list(leases_index.get(key, []))
        await stopped.wait(next_expiry_s(leases, datetime.now(UTC), AGENTS_RECHECK_S) + EXPIRY_MARGIN_S)


# The first run waits a whole interval: at creation (or an operator start) the TarsNode's own event
# has just reconciled it and all its models; running again at once doubled that work.
@kopf.timer(GROUP, VERSION, "tarsnodes", interval=30.0, initial_delay=30.0, id="safety-net")
async def resync(
    namespace: str, name: str, memo: OperatorMemo,
    tarsnodes_index: Bodies, models_index: Bodies, leases_index: Leases, nodes_index: Nodes, daemonsets_index: Bodies,
    **_: Any,
) -> None:  # fmt: skip
    # Not the children: their watch events bring edits back (child_changed), and re-applying eight
    # children of every TarsNode every 30 s was most of the operator's work while nothing changed.
    indexes = _indexes(tarsnodes_index, models_index, leases_index, nodes_index, daemonsets_index)
    await memo.reconciler.tarsnode((namespace, name), indexes.snapshot, children=False)
    await memo.reconciler.models_of((namespace, name), indexes)


@kopf.on.event(
    "rbac.authorization.k8s.io", "v1", "clusterrolebindings",
    labels={MANAGED_BY: OPERATOR, TARSNODE_LABEL: kopf.PRESENT, NAMESPACE_LABEL: kopf.PRESENT},
    id="orphan-sweep",
)  # fmt: skip
async def sweep_orphan(
    type: str, name: str, labels: kopf.Labels, memo: OperatorMemo, tarsnodes_index: Bodies, **_: Any
) -> None:
    """An agent auth binding whose TarsNode was deleted while no operator ran: nothing else removes it.
    The operator's first listing brings every binding here once (indexes are complete by then). An
    event handler, not a timer: a timer would put a finalizer on the binding."""
    if type != "DELETED" and (labels[NAMESPACE_LABEL], labels[TARSNODE_LABEL]) not in tarsnodes_index:
        log.info("removing %s: its TarsNode is gone", name)
        await memo.reconciler.kube.delete(RBAC, "ClusterRoleBinding", None, name)


@kopf.on.event("", "v1", "namespaces")
async def namespace_changed(type: str, name: str, meta: kopf.Meta, memo: OperatorMemo, **_: Any) -> None:
    memo.reconciler.namespace_seen(name, type != "DELETED" and bool(meta.get("deletionTimestamp")))


# --- agents and nodes -------------------------------------------------------------------------------


@kopf.on.event("coordination.k8s.io", "v1", "leases", labels={NAME: AGENT_APP})
async def agent_lease_changed(
    body: kopf.Body, memo: OperatorMemo,
    tarsnodes_index: Bodies, models_index: Bodies, leases_index: Leases, nodes_index: Nodes, daemonsets_index: Bodies,
    **_: Any,
) -> None:  # fmt: skip
    record = lease_record(body)
    if record is None:
        return
    indexes = _indexes(tarsnodes_index, models_index, leases_index, nodes_index, daemonsets_index)
    await memo.reconciler.operator_requests(record, indexes.snapshot())
    if (record.namespace, record.tarsnode) in tarsnodes_index:
        # Detached: kopf indexes this Lease's next renewal only once this handler returns. Waiting
        # here on its 100 models' reconciles left the index seconds behind, and a renewed Lease looked
        # expired: at 100 models the operator moved every model between healthy agents for minutes.
        memo.reconciler.detach(memo.reconciler.agents_moved((record.namespace, record.tarsnode), indexes))


@kopf.on.event("", "v1", "pods", labels={MANAGED_BY: OPERATOR, TARSNODE_LABEL: kopf.PRESENT})
async def agent_pod_changed(
    type: str, name: str, namespace: str, labels: kopf.Labels, body: kopf.Body, memo: OperatorMemo,
    tarsnodes_index: Bodies, models_index: Bodies, leases_index: Leases, nodes_index: Nodes, daemonsets_index: Bodies,
    **_: Any,
) -> None:  # fmt: skip
    """Image pulls that fail and agents that crash show in the TarsNode's PodsHealthy condition."""
    key = (namespace, labels[TARSNODE_LABEL])
    record = None if type == "DELETED" else pod_record(dict(body))
    if memo.reconciler.agent_pod_seen(key, name, record) and key in tarsnodes_index:
        indexes = _indexes(tarsnodes_index, models_index, leases_index, nodes_index, daemonsets_index)
        await memo.reconciler.tarsnode(key, indexes.snapshot, children=False, settle_s=1.0)


@kopf.on.event("", "v1", "nodes")
async def node_changed(
    memo: OperatorMemo,
    tarsnodes_index: Bodies, models_index: Bodies, leases_index: Leases, nodes_index: Nodes, daemonsets_index: Bodies,
    **_: Any,
) -> None:  # fmt: skip
    indexes = _indexes(tarsnodes_index, models_index, leases_index, nodes_index, daemonsets_index)
    for key in list(tarsnodes_index):
        memo.reconciler.detach(memo.reconciler.agents_moved(key, indexes))  # as for Leases: the index stays current


# --- TarsModel -------------------------------------------------------------------------------------


def _scaling_enabled(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("scaling", {}).get("enabled"))


@kopf.timer(GROUP, VERSION, "tarsmodels", interval=1.0, id="autoscaler", when=_scaling_enabled)
async def autoscale(
    body: kopf.Body, memo: OperatorMemo,
    tarsnodes_index: Bodies, models_index: Bodies, leases_index: Leases, nodes_index: Nodes, daemonsets_index: Bodies,
    **_: Any,
) -> None:  # fmt: skip
    """One load sample and one decision every second (agents report every 2 s: a report is seen within
    a second of its arrival), only for models with scaling.enabled; with it off, kubectl scale or an
    HPA own spec.replicas."""
    indexes = _indexes(tarsnodes_index, models_index, leases_index, nodes_index, daemonsets_index)
    await memo.reconciler.autoscale(dict(body), indexes.snapshot())


@kopf.on.event(GROUP, VERSION, "tarsmodels")
async def tarsmodel_changed(
    type: str, body: kopf.Body, namespace: str, name: str, spec: kopf.Spec, memo: OperatorMemo,
    tarsnodes_index: Bodies, models_index: Bodies, leases_index: Leases, nodes_index: Nodes, daemonsets_index: Bodies,
    **_: Any,
) -> None:  # fmt: skip
    MANAGED.labels("TarsModel").set(sum(len(v) for v in models_index.values()))
    if type == "DELETED":
        memo.reconciler.forget_model(namespace, name, spec.get("nodeRef", {}).get("name", ""))
        return
    indexes = _indexes(tarsnodes_index, models_index, leases_index, nodes_index, daemonsets_index)
    await memo.reconciler.tarsmodel(dict(body), indexes)
