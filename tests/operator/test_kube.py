"""Which applies the operator holds back: only Services the API server allocates a cluster IP for."""

from __future__ import annotations

from tars_api import TarsNode
from tars_operator import builders, routing
from tars_operator.kube import allocates_ip
from tests.operator.test_decide import tarsmodel


def test_a_models_service_allocates_and_the_agents_headless_one_does_not() -> None:
    tn = TarsNode.model_validate({"metadata": {"name": "tars", "namespace": "ai", "uid": "u"}, "spec": {}})
    agent_service = next(c for c in builders.desired_children(tn) if c["kind"] == "Service")
    assert allocates_ip(routing.desired_model_service(tarsmodel())) is True
    assert allocates_ip(agent_service) is False
    assert allocates_ip({"kind": "ConfigMap", "metadata": {"name": "c"}}) is False
