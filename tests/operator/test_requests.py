"""Requests guests make to the operator (operator.request): what is acted on and what is refused."""

from __future__ import annotations

from typing import Any

from tars_operator.requests import decide_request


def model(scaling_enabled: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": "sentiment", "namespace": "ai"}, "spec": {"scaling": {"enabled": scaling_enabled}}}


def request(**overrides: Any) -> dict[str, Any]:
    return {
        "id": 1,
        "action": "scale",
        "namespace": "ai",
        "from": "ai/self-healing",
        "model": "sentiment",
        "replicas": 3,
        "reason": "p99 over SLO",
        **overrides,
    }


def test_a_scale_request_is_accepted_with_its_reason() -> None:
    verdict = decide_request(request(), "ai", model())
    assert verdict.accepted and verdict.replicas == 3
    assert "ai/self-healing" in verdict.message and "p99 over SLO" in verdict.message


def test_another_namespace_is_refused() -> None:
    assert not decide_request(request(namespace="other"), "ai", model()).accepted


def test_the_autoscaler_keeps_its_model() -> None:
    verdict = decide_request(request(), "ai", model(scaling_enabled=True))
    assert not verdict.accepted and "autoscaler" in verdict.message


def test_unknown_targets_actions_and_counts_are_refused() -> None:
    assert "no such TarsModel" in decide_request(request(), "ai", None).message
    assert "only scale" in decide_request(request(action="quarantine"), "ai", model()).message
    assert not decide_request(request(replicas=5000), "ai", model()).accepted
    assert not decide_request(request(replicas="many"), "ai", model()).accepted
