"""Cluster-mode decisions as pure functions: Lease shape and annotations, placements, Node labels."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tars_agent.capabilities import ModelKey
from tars_agent.cluster import WOKEN_GRACE_S, placed_models, placed_on, to_unload
from tars_api.lease import (
    ANNOTATION_ADDRESS,
    ANNOTATION_BACKEND,
    ANNOTATION_CAPACITY_MIB,
    ANNOTATION_LOAD,
    ANNOTATION_MODELS,
    ANNOTATION_READY,
    LEASE_DURATION_S,
    AgentReport,
    ModelState,
    agent_annotations,
    lease_body,
    lease_expired,
    parse_agent_annotations,
)

NOW = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def model_obj(name: str, placements: list[dict], namespace: str = "tars", **spec: object) -> dict:
    return {
        "apiVersion": "tars.hyperlight.dev/v1alpha1",
        "kind": "TarsModel",
        "metadata": {"name": name, "namespace": namespace, "generation": 3},
        "spec": {"nodeRef": {"name": "edge"}, "kind": "function", "source": "builtin://echo", **spec},
        "status": {"placements": placements},
    }


def test_lease_body_shape() -> None:
    report = AgentReport(
        address="10.0.0.7:8080",
        backend="wasmtime",
        capacity_mib=2048,
        ready=True,
        models={"tars/echo": ModelState(loaded=True, in_flight=2, memory_mib=256)},
    )
    body = lease_body("node-a", "tars", "agent-pod-x", report, NOW, tarsnode="edge", acquire_time=NOW)
    assert body["metadata"]["name"] == "edge-agent-node-a"
    assert body["metadata"]["labels"] == {
        "app.kubernetes.io/name": "tars-agent",
        "tars.hyperlight.dev/node": "node-a",
        "tars.hyperlight.dev/tarsnode": "edge",
    }
    assert body["spec"] == {
        "holderIdentity": "agent-pod-x",
        "leaseDurationSeconds": LEASE_DURATION_S,
        "renewTime": "2025-01-02T03:04:05.678901Z",
        "acquireTime": "2025-01-02T03:04:05.678901Z",
    }
    notes = body["metadata"]["annotations"]
    assert notes[ANNOTATION_ADDRESS] == "10.0.0.7:8080"
    assert notes[ANNOTATION_BACKEND] == "wasmtime"
    assert notes[ANNOTATION_CAPACITY_MIB] == "2048"
    assert notes[ANNOTATION_READY] == "true"
    assert notes[ANNOTATION_LOAD] == "2"
    assert json.loads(notes[ANNOTATION_MODELS]) == {
        "tars/echo": {"loaded": True, "inFlight": 2, "memoryMiB": 256, "rps": 0.0, "tokens": 0.0}
    }


def test_annotations_round_trip_and_tolerate_garbage() -> None:
    report = AgentReport(
        address="a:1",
        backend="hyperlight",
        capacity_mib=1,
        ready=False,
        backend_reason="probe ok",
        models={"x/y": ModelState(loaded=False, error="boom")},
    )
    assert parse_agent_annotations(agent_annotations(report)) == report
    junk = parse_agent_annotations({ANNOTATION_MODELS: "{nope", ANNOTATION_CAPACITY_MIB: "lots"})
    assert junk.models == {} and junk.capacity_mib == 0 and junk.ready is False


def test_lease_expiry() -> None:
    assert not lease_expired(NOW - timedelta(seconds=10), 15, NOW)
    assert lease_expired(NOW - timedelta(seconds=16), 15, NOW)
    assert lease_expired(None, 15, NOW)


def test_placements_select_this_node_only() -> None:
    items = [
        model_obj("mine", [{"node": "node-a", "replicas": 1}, {"node": "node-b"}]),
        model_obj("theirs", [{"node": "node-b", "replicas": 1}]),
        model_obj("scaled-away", [{"node": "node-a", "replicas": 0}]),
        model_obj("unplaced", []),
        {**model_obj("no-status", []), "status": None},
        model_obj("broken", [{"node": "node-a"}], kind="not-a-kind"),
    ]
    assert placed_on(items[0], "node-a") and not placed_on(items[1], "node-a")
    wanted, invalid = placed_models(items, "node-a")
    assert list(wanted) == [ModelKey("tars", "mine")]
    assert wanted[ModelKey("tars", "mine")].metadata.generation == 3
    assert list(invalid) == [ModelKey("tars", "broken")]


def test_concurrency_is_averaged_over_time_not_sampled() -> None:
    from tars_agent.agent import ConcurrencyMeter

    now = [0.0]
    meter = ConcurrencyMeter(clock=lambda: now[0])
    for _ in range(3):  # three requests of 0.5 s each, one after another, in a 2 s window
        meter.begin("m")
        now[0] += 0.5
        meter.end("m")
    now[0] = 2.0
    assert meter.read() == {"m": 0.75}  # busy 1.5 s of 2 s; a sample at t=2 would have said 0
    meter.begin("m")
    meter.begin("m")
    now[0] = 3.0
    assert meter.read() == {"m": 2.0}


def test_a_model_woken_from_zero_stays_loaded_until_the_operator_can_place_it() -> None:
    woken, placed, gone = ModelKey("tars", "woken"), ModelKey("tars", "placed"), ModelKey("tars", "unplaced")
    loaded = {woken, placed, gone}
    at = {woken: 100.0}
    known = {"woken", "placed", "unplaced"}
    # Not placed here yet, woken 1 s ago: kept; a model simply no longer placed here: unloaded.
    assert to_unload(loaded, {placed}, at, known, now=101.0) == {gone}
    # Placed meanwhile: kept whatever the time.
    assert to_unload(loaded, {placed, woken}, at, known, now=100.0 + 10 * WOKEN_GRACE_S) == {gone}
    # Past the grace and still not placed (its TarsModel at zero without autoscaling): unloaded.
    assert to_unload(loaded, {placed}, at, known, now=100.0 + WOKEN_GRACE_S) == {woken, gone}
    # Its TarsModel deleted: unloaded at once, grace or not.
    assert to_unload(loaded, {placed}, at, {"placed", "unplaced"}, now=101.0) == {woken, gone}
