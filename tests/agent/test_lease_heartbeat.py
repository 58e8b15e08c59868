"""The agent's Lease heartbeat is never queued behind its other blocking work.

Before, the renewal ran in the event loop's shared thread pool, beside TokenReviews, TarsModel lists
and knowledge loads. With that pool busy (a store or API outage holds its threads for seconds) the
renewal waited, the Lease expired, and the operator moved every model off a healthy agent.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from tars_agent.cluster import ClusterAgent
from tests.fixtures import ControlPlane

from .conftest import SharedBackend, make_agent


async def test_renewal_goes_through_while_the_shared_pool_is_held(
    backend: SharedBackend,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("POD_NAMESPACE", namespace)
    agent = make_agent(backend, state_dir=tmp_path)
    cluster = ClusterAgent(agent, "node-heartbeat", "127.0.0.1:1")
    release = threading.Event()
    # More blocked calls than the shared pool has threads: anything queued there waits for `release`.
    held = [asyncio.create_task(asyncio.to_thread(release.wait, 60)) for _ in range(40)]
    try:
        await asyncio.wait_for(cluster.renew_once(), timeout=30)
        lease = control_plane.get_json("lease", cluster.lease, "-n", namespace)
        assert lease["spec"]["holderIdentity"] == cluster.holder
    finally:
        release.set()
        await asyncio.gather(*held)
        cluster.stop()
        agent.close()
