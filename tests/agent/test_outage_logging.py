"""An agent whose API server is unreachable logs one line per change of state (issue 17, item 8)."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from tars_agent.cluster import ClusterAgent
from tars_agent.outage import OutageLog

from .conftest import SharedBackend, make_agent

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: gone, cluster: {server: "https://127.0.0.1:%d", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: gone, user: u}}]
current-context: c
"""


def test_outage_log_writes_transitions_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="outage-test")
    outage = OutageLog("renewing", logging.getLogger("outage-test"))
    for _ in range(5):
        outage.failed(ConnectionRefusedError("refused"))
    outage.failed(TimeoutError("slow"))
    outage.succeeded()
    outage.succeeded()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert lines == [
        ("WARNING", "renewing failed: ConnectionRefusedError: refused (retrying; logged again when this changes)"),
        ("WARNING", "renewing failed: TimeoutError: slow (retrying; logged again when this changes)"),
        ("INFO", "renewing works again after 6 failed attempts"),
    ]


async def test_unreachable_api_server_logs_once_per_loop(
    backend: SharedBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG % port)
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    caplog.set_level(logging.DEBUG)
    # A state directory: an agent without one warns once at start that documents stay in memory.
    agent = make_agent(backend, state_dir=tmp_path)
    cluster = ClusterAgent(agent, "node-x", "127.0.0.1:1")
    tasks = [asyncio.create_task(cluster.renew_forever()), asyncio.create_task(cluster.sync_forever())]
    try:
        await asyncio.sleep(7)  # renewals every 2 s, watch retries every 2 s
        # Never synced, so it cannot know what it must serve: not ready (it used to say ready).
        assert not agent.ready()
    finally:
        for task in tasks:
            task.cancel()
        cluster.stop()
        agent.close()
    ours = [r for r in caplog.records if r.name == "tars_agent.cluster"]
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(r.name == "tars_agent.cluster" and r.exc_info is None for r in loud), [r.getMessage() for r in loud]
    warnings = sorted(r.getMessage().split(" failed:")[0] for r in loud)
    assert warnings == ["renewing Lease " + cluster.lease, "syncing TarsModels", "watching TarsModels"], warnings
    retries = [r for r in ours if r.levelno == logging.DEBUG and r.getMessage().startswith("renewing Lease")]
    assert len(retries) >= 3  # it kept trying, quietly
