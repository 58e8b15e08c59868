"""The operator's only door to the API server: server-side apply, status patches, deletes.

The kubernetes client is synchronous; every call runs in a worker thread so kopf's event loop keeps
serving watches while a request is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tars_api.labels import FIELD_MANAGER
from tars_common.kube import CONNECTION_POOL_SIZE
from tars_operator.metrics import API_REQUESTS, API_SECONDS

log = logging.getLogger(__name__)
# Status writes have threads of their own: a model's status carries the placements its agents act on.
# After a lost agent, each moved model's status queued behind its slice requests in the shared threads
# (the last of 82 behind some 160): 4.7 s from the agent declared lost to every placement moved, now 2.8.
STATUS_CONCURRENCY = 8
# Reconciles run concurrently in worker threads, each with its own pooled connection.
API_CONCURRENCY = CONNECTION_POOL_SIZE - STATUS_CONCURRENCY
# Services that allocate a ClusterIP applied at once, at most. Under load one took 2-5 s (3-15x any
# other apply); 200 new models' Services held all the threads while their slices and status waited.
ALLOCATING_SERVICES = 4


def resource_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """REST path of an object. Every kind the operator manages pluralises by appending "s"."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}" if namespace else base
    path += f"/{kind.lower()}s"
    return f"{path}/{name}" if name else path


def resource_of(path: str) -> str:
    """The plural (and subresource) a resource_path names: the label of the request counter."""
    parts = path.split("?")[0].strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if len(rest) > 2 and rest[0] == "namespaces":
        rest = rest[2:]
    return "/".join([rest[0], *rest[2:3]])


def written_last_by(obj: dict[str, Any], manager: str = FIELD_MANAGER) -> bool:
    """True when ``manager`` made the latest change to ``obj``'s spec or metadata (status moving, by
    whatever controller, does not count): a watch event then only echoes that manager's own write.
    A tie goes to the others, so an edit in the same second as the manager's apply still counts."""
    entries = [e for e in obj.get("metadata", {}).get("managedFields") or [] if not e.get("subresource")]
    latest = max((e.get("time") or "" for e in entries), default="")
    writers = {e.get("manager") for e in entries if (e.get("time") or "") == latest}
    return writers == {manager}


def allocates_ip(obj: dict[str, Any]) -> bool:
    """True for a Service the API server gives a cluster IP (not a headless one)."""
    return obj["kind"] == "Service" and obj.get("spec", {}).get("clusterIP") != "None"


class Slots:
    """At most ``size`` holders at once; a waiter that goes ahead gets the next free slot before every
    other waiter. Applies queued in the threads' own queue instead: one arriving behind a burst's
    supporting children waited for all of them, however fast each was (1,000 models on 100 TarsNodes:
    DaemonSet applies took 0.19 s mean, and p95 TarsNode -> DaemonSet was 6.4 s)."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._ahead: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()

    @contextlib.asynccontextmanager
    async def taken(self, ahead: bool = False) -> AsyncIterator[None]:
        if self._free and not self._ahead and not self._others:
            self._free -= 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            (self._ahead if ahead else self._others).append(waiter)
            try:
                await waiter  # a releaser handed its slot over
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # handed over just before the cancellation
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        for queue in (self._ahead, self._others):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():  # a cancelled waiter is skipped
                    waiter.set_result(None)
                    return
        self._free += 1


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self._allocating = asyncio.Semaphore(ALLOCATING_SERVICES)
        self._slots = Slots(API_CONCURRENCY)  # as many as the threads the applies run in
        self._ahead = 0  # applies with ahead=True in flight
        self._none_ahead = asyncio.Event()
        self._none_ahead.set()
        self._status_lane = ThreadPoolExecutor(STATUS_CONCURRENCY, "kube-status")

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> Any:
        request = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        resource = resource_of(path)
        API_REQUESTS.labels(method, resource).inc()
        with API_SECONDS.labels(method, resource).time():
            response = self.api.call_api(*request, _request_timeout=30)
            response.read()
        if not 200 <= response.status < 300:
            raise ApiException(http_resp=response)
        return json.loads(response.data) if response.data else None

    def apply_sync(self, obj: dict[str, Any], field_manager: str = FIELD_MANAGER) -> Any:
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        # force: the manager owns these objects; a hand edit to a field it sets is drift to undo.
        return self._call(
            "PATCH", path, obj, "application/apply-patch+yaml", [("fieldManager", field_manager), ("force", "true")]
        )

    def get_sync(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist (blocking: call it from a worker thread)."""
        try:
            found: dict[str, Any] = self._call("GET", resource_path(api_version, kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    async def apply(self, obj: dict[str, Any], *, ahead: bool = False) -> Any:
        """``ahead``: every other apply waits while one such is in flight. A burst of new TarsNodes
        queued each one's DaemonSet, what its user waits for, behind the others' seven supporting
        children (100 TarsNodes at once, under load: DaemonSet p95 12.4 s). Not in threads of their
        own: with four, the API server answered them too slowly (p95 13.3 s)."""
        if ahead:
            self._ahead += 1
            self._none_ahead.clear()
            try:
                async with self._slots.taken(ahead=True):
                    return await asyncio.to_thread(self.apply_sync, obj)
            finally:
                self._ahead -= 1
                if not self._ahead:
                    self._none_ahead.set()
        await self._none_ahead.wait()
        async with self._allocating if allocates_ip(obj) else contextlib.nullcontext(), self._slots.taken():
            return await asyncio.to_thread(self.apply_sync, obj)

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The object as written, or None when it was deleted meanwhile (nothing to report on)."""
        path = resource_path(api_version, kind, namespace, name) + "/status"
        try:
            patch = functools.partial(self._call, "PATCH", path, {"status": status}, "application/merge-patch+json")
            written: dict[str, Any] = await asyncio.get_running_loop().run_in_executor(self._status_lane, patch)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None
        return written

    async def patch(self, api_version: str, kind: str, namespace: str | None, name: str, patch: dict[str, Any]) -> None:
        path = resource_path(api_version, kind, namespace, name)
        await asyncio.to_thread(self._call, "PATCH", path, patch, "application/merge-patch+json")

    async def scale(self, api_version: str, kind: str, namespace: str, name: str, replicas: int) -> None:
        """Writes spec.replicas through the scale subresource, exactly as kubectl scale or an HPA does."""
        path = resource_path(api_version, kind, namespace, name) + "/scale"
        body = {"spec": {"replicas": replicas}}
        await asyncio.to_thread(self._call, "PATCH", path, body, "application/merge-patch+json")

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        try:
            await asyncio.to_thread(self._call, "DELETE", resource_path(api_version, kind, namespace, name))
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        result = await asyncio.to_thread(
            self._call,
            "GET",
            resource_path(api_version, kind, namespace),
            None,
            "application/json",
            [("labelSelector", label_selector)],
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items
