"""What an object shows when its own reconcile fails: reason and message, from the real errors."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from tars_api import TarsModel
from tars_operator.status import failure_conditions


def test_an_invalid_spec_names_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        TarsModel.model_validate({"metadata": {"name": "a.b"}, "spec": {"nodeRef": {"name": "n"}, "kind": "x"}})
    ready, degraded = failure_conditions(caught.value)
    assert (ready.type, ready.status, ready.reason) == ("Ready", False, "InvalidSpec")
    assert (degraded.type, degraded.status) == ("Degraded", True)
    assert "spec.kind" in degraded.message


def test_a_refused_change_quotes_the_api_server() -> None:
    error = ApiException(status=422, reason="Unprocessable Entity")
    error.body = json.dumps({"kind": "Status", "message": 'Service "tars-model-x" is invalid'})
    ready, degraded = failure_conditions(error)
    assert ready.reason == degraded.reason == "ApplyFailed"
    assert degraded.message == 'the API server refused a change: Service "tars-model-x" is invalid'


def test_an_unexpected_error_is_bounded() -> None:
    _, degraded = failure_conditions(RuntimeError("x" * 5000))
    assert degraded.reason == "ReconcileFailed" and len(degraded.message) == 1000
