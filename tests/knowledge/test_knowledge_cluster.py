"""Knowledge stores in a real cluster, on both backends: two cluster-mode agents serve one TarsModel
(placed by the real operator); an upsert acknowledged by one is cited by the other within the sync
interval, survives that agent's SIGKILL, and is there as soon as the restarted agent is ready.
Deleting the model deletes its documents after the grace period; retain keeps them.

SQLite replicas share the node's state directory (two agents on one machine); PostgreSQL replicas
share the database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tars_agent.runtimes.knowledge_store import open_store
from tests.fixtures import ControlPlane, OperatorProcess, eventually
from tests.knowledge.agents import KB_MODEL, AgentProcess, answered, cited, model_ready

pytestmark = pytest.mark.cluster

QUESTION = "Which region holds the backups of the billing database?"
FIRST = {"id": "backups", "text": "Backups of the billing database are kept in the eu-west region."}
SECOND = {"id": "restore", "text": "Restoring the billing database from backups takes about twenty minutes."}


def apply(cp: ControlPlane, namespace: str, obj: dict[str, Any]) -> None:
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


@pytest.fixture
def agents(
    control_plane: ControlPlane,
    namespace: str,
    simulated_nodes: tuple[str, ...],
    operator: OperatorProcess,
    backend: tuple[str, Path | None, str | None],
    tmp_path: Path,
) -> Iterator[list[AgentProcess]]:
    name, state, dsn = backend
    knowledge: dict[str, Any] = {"backend": name, "deletionGracePeriod": "1s"}
    if dsn:
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kb-db"}, "stringData": {"dsn": dsn}}
        apply(control_plane, namespace, secret)
        knowledge["dsnSecretRef"] = {"name": "kb-db"}
    tarsnode = {"apiVersion": "tars.hyperlight.dev/v1alpha1", "kind": "TarsNode", "metadata": {"name": "tars"}}
    apply(control_plane, namespace, {**tarsnode, "spec": {"knowledge": knowledge}})
    started = []
    for node in simulated_nodes[:2]:
        env = {
            **control_plane.env,
            "NODE_NAME": node,
            "POD_IP": "127.0.0.1",
            "POD_NAMESPACE": namespace,
            "POD_NAME": f"tars-agent-{node}",
        }
        if dsn:
            env["TARS_KNOWLEDGE_DSN"] = dsn  # what the DaemonSet's secretKeyRef gives a pod
        args = ["--tarsnode", "tars", "--default-access", "open", "--knowledge-backend", name]
        args += ["--knowledge-grace", "1s", *(["--state-dir", str(state)] if state else [])]
        started.append(AgentProcess(args, env, tmp_path / f"agent-{node}.log").start())
    try:
        yield started
    finally:
        for agent in started:
            agent.stop()
        for agent in started:
            print(agent.log.read_text(errors="replace")[-2000:])


def test_every_replica_sees_an_acknowledged_upsert_which_survives_sigkill(
    control_plane: ControlPlane,
    namespace: str,
    agents: list[AgentProcess],
    backend: tuple[str, Path | None, str | None],
) -> None:
    one, two = agents
    for agent in agents:
        agent.wait_ready()
    spec: dict[str, Any] = {**KB_MODEL["spec"], "replicas": 2}  # type: ignore[dict-item]
    apply(control_plane, namespace, {**KB_MODEL, "spec": spec})
    kept = {"knowledge": {"retain": True}}
    apply(control_plane, namespace, {**KB_MODEL, "metadata": {"name": "kept"}, "spec": {**spec, **kept}})

    def placed_on_both() -> bool:
        status = control_plane.get_json("tarsmodel", "kb", "-n", namespace).get("status") or {}
        return sum(p.get("ready", False) for p in status.get("placements", [])) == 2

    eventually(placed_on_both, 600, "kb ready on both agents")

    # Waits are generous (a 2-core CI machine runs other suites beside this one): the sync interval
    # is 0.5 s, so they only bound how long a failure takes to report.
    answer = answered(one.url, {"question": QUESTION, "documents": [FIRST]})
    assert answer["documents_added"] == 1, answer
    eventually(lambda: "backups" in cited(two.url, QUESTION), 120, "the other replica to cite the write")

    answered(two.url, {"question": QUESTION, "documents": [SECOND]})
    two.kill()  # right after the acknowledgement
    eventually(lambda: "restore" in cited(one.url, QUESTION), 120, "the surviving replica to cite the write")
    two.start().wait_ready()
    eventually(lambda: model_ready(two.url), 600, "kb loaded again on the restarted agent")
    assert {"backups", "restore"} <= cited(two.url, QUESTION)  # its documents were loaded first

    # Lifecycle: both models deleted; kb's documents go after the 1s grace period, kept's stay. kept is
    # written to and deleted at once, before any agent's sync may have seen its tenant (its retain
    # comes with its first write).
    eventually(lambda: model_ready(one.url, "kept"), 600, "kept loaded on the first agent")
    answered(one.url, {"question": "x", "documents": [FIRST]}, model="kept")
    control_plane.kubectl("delete", "tarsmodel", "kb", "kept", "-n", namespace)
    store = open_store(*backend)
    try:
        eventually(lambda: store.documents(f"{namespace}/kb") == [], 300, "kb's documents deleted")
        assert [d.id for d in store.documents(f"{namespace}/kept")] == ["backups"]
    finally:
        store.close()
