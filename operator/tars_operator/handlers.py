"""kopf wiring: indexes of what the operator watches, and thin handlers that call the reconciler."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from tars_api import GROUP, VERSION
from tars_api.labels import AGENT_APP, MANAGED_BY, NAME, OPERATOR, TARSNODE_LABEL
from tars_common.kube import load_client_config
from tars_operator import builders
from tars_operator.agents import lease_record, node_record
from tars_operator.kube import API_CONCURRENCY, Kube
from tars_operator.metrics import MANAGED
from tars_operator.reconciler import Observed, Reconciler, observed_from

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
_reconciler: Reconciler | None = None


def reconciler() -> Reconciler:
    global _reconciler
    if _reconciler is None:
        _reconciler = Reconciler(Kube(load_client_config()))
    return _reconciler


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
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
    # Two replicas with kopf peering: the higher priority acts, the other waits. Equal priorities
    # would both act, so each replica draws its own unless told.
    settings.peering.priority = int(os.environ.get("TARS_OPERATOR_PRIORITY", random.randint(1, 1_000_000)))
    settings.peering.lifetime = int(os.environ.get("TARS_PEERING_LIFETIME", "20"))
    settings.peering.name = PEERING_NAME
    settings.peering.mandatory = False
    # Kept on the settings object only so the task is referenced for the operator's lifetime.
    settings.tars_sweeper = asyncio.create_task(sweep_orphans_forever())  # type: ignore[attr-defined]


SWEEP_INTERVAL_S = 300.0


async def sweep_orphans_forever() -> None:
    """Auth bindings whose TarsNode was deleted while no operator ran: nothing else removes them."""
    await asyncio.sleep(5)
    while True:
        try:
            await reconciler().sweep_orphan_bindings()
        except Exception:
            log.exception("sweeping orphaned agent auth bindings failed; retrying later")
        await asyncio.sleep(SWEEP_INTERVAL_S)


def _seen(kwargs: dict[str, Any]) -> Observed:
    return observed_from(kwargs)


# --- indexes ---------------------------------------------------------------------------------------


@kopf.index(GROUP, VERSION, "tarsnodes")
def tarsnodes_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): dict(body)}


@kopf.index(GROUP, VERSION, "tarsmodels")
def models_index(namespace: str, spec: kopf.Spec, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, spec.get("nodeRef", {}).get("name", "")): dict(body)}


@kopf.index("coordination.k8s.io", "v1", "leases", labels={NAME: AGENT_APP})
def leases_index(body: kopf.Body, **_: Any) -> dict[Any, Any] | None:
    record = lease_record(body)
    return {(record.namespace, record.tarsnode): record} if record else None


@kopf.index("", "v1", "nodes")
def nodes_index(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {name: node_record(body)}


@kopf.index("apps", "v1", "daemonsets", labels={MANAGED_BY: OPERATOR})
def daemonsets_index(namespace: str, labels: kopf.Labels, status: kopf.Status, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels.get(TARSNODE_LABEL, "")): dict(status)}


# --- TarsNode --------------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "tarsnodes")
async def tarsnode_changed(type: str, namespace: str, name: str, **kwargs: Any) -> None:
    MANAGED.labels("TarsNode").set(len(kwargs["tarsnodes_index"]))
    if type == "DELETED":
        reconciler().forget_tarsnode((namespace, name))
        # Owner references let the garbage collector remove the namespaced children; the
        # cluster-scoped auth binding cannot be owned, so it goes here (and in the orphan sweep).
        await reconciler().kube.delete(
            "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", None, builders.auth_binding_name(namespace, name)
        )
        return
    await reconciler().tarsnode((namespace, name), lambda: _seen(kwargs), children=False)
    if reconciler().first_sight((namespace, name)):
        # Models waiting for this node (NodeNotFound) can be placed now. Later changes of the node
        # reach its models through the agents (Leases), not through its own status updates.
        await _reconcile_models_of((namespace, name), kwargs)


def _child_event(group: str, version: str, plural: str) -> None:
    @kopf.on.event(
        group, version, plural, labels={MANAGED_BY: OPERATOR, TARSNODE_LABEL: kopf.PRESENT}, id=f"child-{plural}"
    )
    async def child_changed(namespace: str, labels: kopf.Labels, **kwargs: Any) -> None:
        # A child edited or deleted by hand (or its status moving) brings the owner back to spec.
        key = (namespace, labels[TARSNODE_LABEL])
        if key in kwargs["tarsnodes_index"]:
            await reconciler().tarsnode(key, lambda: _seen(kwargs), settle_s=0.2)


for _group, _version, _plural in CHILD_KINDS:
    _child_event(_group, _version, _plural)


@kopf.timer(GROUP, VERSION, "tarsnodes", interval=1.0, id="agents-watch")
async def watch_agents(namespace: str, name: str, **kwargs: Any) -> None:
    """Lease expiry makes no watch event, so liveness is re-checked on a short timer."""
    seen = _seen(kwargs)
    if reconciler().agents_changed((namespace, name), seen):
        await reconciler().tarsnode((namespace, name), lambda: _seen(kwargs), children=False)
        await _reconcile_models_of((namespace, name), kwargs)


@kopf.timer(GROUP, VERSION, "tarsnodes", interval=30.0, id="safety-net")
async def resync(namespace: str, name: str, **kwargs: Any) -> None:
    await reconciler().tarsnode((namespace, name), lambda: _seen(kwargs))
    await _reconcile_models_of((namespace, name), kwargs)


async def _reconcile_models_of(node_key: tuple[str, str], kwargs: dict[str, Any]) -> None:
    for body in list(kwargs["models_index"].get(node_key, [])):
        await reconciler().tarsmodel(body, lambda: _seen(kwargs))


# --- agents and nodes -------------------------------------------------------------------------------


@kopf.on.event("coordination.k8s.io", "v1", "leases", labels={NAME: AGENT_APP})
async def agent_lease_changed(body: kopf.Body, **kwargs: Any) -> None:
    record = lease_record(body)
    if record is None:
        return
    key = (record.namespace, record.tarsnode)
    await reconciler().operator_requests(record, _seen(kwargs))
    if key in kwargs["tarsnodes_index"] and reconciler().agents_changed(key, _seen(kwargs)):
        await reconciler().tarsnode(key, lambda: _seen(kwargs), children=False)
        await _reconcile_models_of(key, kwargs)


@kopf.on.event("", "v1", "nodes")
async def node_changed(**kwargs: Any) -> None:
    seen = _seen(kwargs)
    for key in list(seen.tarsnodes):
        if reconciler().agents_changed(key, seen):
            await reconciler().tarsnode(key, lambda: _seen(kwargs), children=False)
            await _reconcile_models_of(key, kwargs)


# --- TarsModel -------------------------------------------------------------------------------------


def _scaling_enabled(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("scaling", {}).get("enabled"))


@kopf.timer(GROUP, VERSION, "tarsmodels", interval=2.0, id="autoscaler", when=_scaling_enabled)
async def autoscale(body: kopf.Body, **kwargs: Any) -> None:
    """One load sample and one decision every 2 s, only for models with scaling.enabled; with it off,
    kubectl scale or an HPA own spec.replicas."""
    await reconciler().autoscale(dict(body), _seen(kwargs))


@kopf.on.event(GROUP, VERSION, "tarsmodels")
async def tarsmodel_changed(
    type: str, body: kopf.Body, namespace: str, name: str, spec: kopf.Spec, **kwargs: Any
) -> None:
    MANAGED.labels("TarsModel").set(sum(len(v) for v in kwargs["models_index"].values()))
    if type == "DELETED":
        reconciler().forget_model(namespace, name, spec.get("nodeRef", {}).get("name", ""))
        return
    await reconciler().tarsmodel(dict(body), lambda: _seen(kwargs))
