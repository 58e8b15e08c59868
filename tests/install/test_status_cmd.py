"""`tarsctl status` turns conditions into what is wrong and what to do next."""

from __future__ import annotations

from tarsctl.status_cmd import describe


def _obj(kind: str, name: str, conditions: list[dict[str, str]], **status: object) -> dict[str, object]:
    return {
        "kind": kind,
        "metadata": {"namespace": "ns", "name": name},
        "spec": {"replicas": 1},
        "status": {"conditions": conditions, **status},
    }


def test_failing_conditions_are_listed_with_the_next_step() -> None:
    node = _obj(
        "TarsNode",
        "edge",
        [
            {"type": "Ready", "status": "False", "reason": "NoKVMNodes", "message": "0 of 2 nodes eligible"},
            {"type": "Degraded", "status": "False", "reason": "AsExpected"},
            {"type": "PodsHealthy", "status": "True", "reason": "ContainersRunning"},
        ],
        readyAgents=0,
        desiredAgents=0,
    )
    lines = describe([node], [])
    assert lines[0].startswith("TarsNode ns/edge: NOT OK (0/0 agents ready")
    assert "Ready=False NoKVMNodes: 0 of 2 nodes eligible" in lines[1]
    assert "kubectl label node NODE tars.hyperlight.dev/kvm=true" in lines[1]
    assert len(lines) == 2, lines


def test_healthy_objects_are_ok_and_objects_without_status_say_why() -> None:
    model = _obj("TarsModel", "sentiment", [{"type": "Ready", "status": "True", "reason": "Ready"}], readyReplicas=1)
    fresh = {"kind": "TarsModel", "metadata": {"namespace": "ns", "name": "new"}, "spec": {"replicas": 2}}
    lines = describe([], [model, fresh])
    assert lines[0] == "TarsModel ns/new: NOT OK (0/2 replicas ready)"
    assert "is the operator running" in lines[1]
    assert lines[2] == "TarsModel ns/sentiment: OK (1/1 replicas ready)"
    assert describe([], []) == ["no TarsNodes or TarsModels found"]
