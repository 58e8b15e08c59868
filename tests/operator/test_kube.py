"""Which applies the operator holds back: Services the API server allocates a cluster IP for, and
every apply while one that goes ahead is in flight."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tars_api import TarsNode
from tars_api.labels import FIELD_MANAGER
from tars_common.kube import load_client_config
from tars_operator import builders, routing
from tars_operator.kube import Kube, Slots, allocates_ip
from tests.fixtures import ControlPlane
from tests.operator.test_decide import tarsmodel


def test_a_models_service_allocates_and_the_agents_headless_one_does_not() -> None:
    tn = TarsNode.model_validate({"metadata": {"name": "tars", "namespace": "ai", "uid": "u"}, "spec": {}})
    agent_service = next(c for c in builders.desired_children(tn) if c["kind"] == "Service")
    assert allocates_ip(routing.desired_model_service(tarsmodel())) is True
    assert allocates_ip(agent_service) is False
    assert allocates_ip({"kind": "ConfigMap", "metadata": {"name": "c"}}) is False


class Recording(Kube):
    """The operator's Kube against the real API server, noting when each apply starts and ends."""

    def __init__(self, kubeconfig: str) -> None:
        super().__init__(load_client_config(kubeconfig))
        self.log: list[tuple[str, str]] = []

    def apply_sync(self, obj: dict[str, Any], field_manager: str = FIELD_MANAGER) -> Any:
        self.log.append(("start", obj["metadata"]["name"]))
        try:
            return super().apply_sync(obj, field_manager)
        finally:
            self.log.append(("end", obj["metadata"]["name"]))


def _configmap(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}, "data": {}}


@pytest.mark.cluster
async def test_applies_wait_while_one_that_goes_ahead_is_in_flight(control_plane: ControlPlane, namespace: str) -> None:
    """A new TarsNode's DaemonSet goes ahead of the other TarsNodes' supporting children."""
    kube = Recording(str(control_plane.kubeconfig))
    ahead = [_configmap(namespace, f"ahead-{i}") for i in range(3)]
    others = [_configmap(namespace, f"other-{i}") for i in range(6)]
    await asyncio.gather(*(kube.apply(obj, ahead=True) for obj in ahead), *(kube.apply(obj) for obj in others))
    ends = [i for i, (what, name) in enumerate(kube.log) if what == "end" and name.startswith("ahead")]
    starts = [i for i, (what, name) in enumerate(kube.log) if what == "start" and name.startswith("other")]
    assert max(ends) < min(starts), kube.log
    for obj in ahead + others:  # every apply went through
        assert control_plane.get_json("configmap", obj["metadata"]["name"], "-n", namespace)


async def test_a_free_slot_goes_to_those_waiting_ahead_first() -> None:
    slots = Slots(2)
    order: list[str] = []
    release = asyncio.Event()
    holding = [0, 0]  # now, most

    async def hold(name: str, ahead: bool = False) -> None:
        async with slots.taken(ahead=ahead):
            order.append(name)
            holding[0] += 1
            holding[1] = max(holding)
            await release.wait()
            await asyncio.sleep(0)
            holding[0] -= 1

    tasks = [asyncio.create_task(hold(n)) for n in ("first", "second", "other-1", "other-2")]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(hold("ahead", ahead=True))]
    cancelled = asyncio.create_task(hold("cancelled", ahead=True))
    for _ in range(3):
        await asyncio.sleep(0)
    cancelled.cancel()  # a waiter that leaves gives no slot away
    assert order == ["first", "second"]
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    # The ahead waiter came last and was let in first; never more than two held a slot at once.
    assert order == ["first", "second", "ahead", "other-1", "other-2"]
    assert holding == [0, 2]
    async with slots.taken(), slots.taken():  # both slots back
        pass
