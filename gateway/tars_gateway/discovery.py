"""Keeps a RouteTable current from the API server: EndpointSlices, TarsModels and TarsNodes of one
namespace, each followed by a watch in its own thread (the kubernetes client is synchronous)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch

from tars_api import GROUP, VERSION
from tars_api.labels import MODEL_LABEL, OPERATOR_SLICES
from tars_gateway.routes import Endpoint, RouteTable

log = logging.getLogger(__name__)


def apply_slice(table: RouteTable, event_type: str, obj: dict[str, Any]) -> None:
    labels = obj["metadata"].get("labels") or {}
    model = labels.get(MODEL_LABEL)
    if not model:
        return
    name = obj["metadata"]["name"]
    if event_type == "DELETED":
        table.drop_slice(model, name)
        return
    port = next((p.get("port") for p in obj.get("ports") or []), None)
    endpoints = [
        (Endpoint(f"{address}:{port}", ep.get("nodeName", "")), bool((ep.get("conditions") or {}).get("ready")))
        for ep in obj.get("endpoints") or []
        for address in ep.get("addresses", [])[:1]
    ]
    table.set_slice(model, name, endpoints if port else [])


def apply_model(table: RouteTable, event_type: str, obj: dict[str, Any]) -> None:
    name = obj["metadata"]["name"]
    if event_type == "DELETED":
        table.model_nodes.pop(name, None)
        table.model_memory.pop(name, None)
        table.waking.pop(name, None)
    else:
        spec = obj.get("spec") or {}
        table.model_nodes[name] = spec.get("nodeRef", {}).get("name", "")
        placements = (obj.get("status") or {}).get("placements") or []
        placed = {p.get("node", ""): int(p.get("replicas", 1)) for p in placements}
        table.model_memory[name] = (int(spec.get("memoryMiB", 256)), placed)


def apply_node(table: RouteTable, event_type: str, obj: dict[str, Any]) -> None:
    name = obj["metadata"]["name"]
    agents = (obj.get("status") or {}).get("agents") or []
    for a in agents:
        if a.get("address"):
            table.agent_capacity[a["address"]] = int(a.get("capacityMiB", 0))
    table.node_agents[name] = (
        []
        if event_type == "DELETED"
        else [Endpoint(a["address"], a.get("node", "")) for a in agents if a.get("ready") and a.get("address")]
    )


class Discovery:
    def __init__(
        self, table: RouteTable, namespace: str, api: client.ApiClient, loop: asyncio.AbstractEventLoop
    ) -> None:
        # Updates are handed to the event loop, so the table is only ever touched from one thread.
        self.table, self.namespace, self.loop = table, namespace, loop
        self.serializer = api
        custom, discovery = client.CustomObjectsApi(api), client.DiscoveryV1Api(api)
        self.sources: list[tuple[str, Callable[..., Any], dict[str, Any], Callable[..., None]]] = [
            (
                "endpointslices",
                discovery.list_namespaced_endpoint_slice,
                {"namespace": namespace, "label_selector": OPERATOR_SLICES},
                apply_slice,
            ),
            (
                "tarsmodels",
                custom.list_namespaced_custom_object,
                {"group": GROUP, "version": VERSION, "namespace": namespace, "plural": "tarsmodels"},
                apply_model,
            ),
            (
                "tarsnodes",
                custom.list_namespaced_custom_object,
                {"group": GROUP, "version": VERSION, "namespace": namespace, "plural": "tarsnodes"},
                apply_node,
            ),
        ]
        self._stop = threading.Event()

    def start(self) -> None:
        for name, list_fn, kwargs, apply in self.sources:
            threading.Thread(
                target=self._follow, args=(name, list_fn, kwargs, apply), daemon=True, name=f"watch-{name}"
            ).start()

    def stop(self) -> None:
        self._stop.set()

    def _apply(self, apply: Callable[[RouteTable, str, dict[str, Any]], None], kind: str, body: dict[str, Any]) -> None:
        apply(self.table, kind, body)
        self.table.changed()

    def _follow(
        self,
        name: str,
        list_fn: Callable[..., Any],
        kwargs: dict[str, Any],
        apply: Callable[[RouteTable, str, dict[str, Any]], None],
    ) -> None:
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(list_fn, timeout_seconds=60, **kwargs):
                    obj = event["object"]
                    body = obj if isinstance(obj, dict) else self.serializer.sanitize_for_serialization(obj)
                    self.loop.call_soon_threadsafe(self._apply, apply, event["type"], body)
                    if self._stop.is_set():
                        return
            except Exception:
                log.warning("watch on %s failed; restarting", name, exc_info=True)
                time.sleep(1)
