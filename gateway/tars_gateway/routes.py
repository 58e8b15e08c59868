"""Where a model's requests can go, and which endpoint takes the next one. Pure, no I/O.

Endpoints come from the model's EndpointSlices (agents holding it; ready when loaded). A model at
zero replicas has none: then any ready agent of its TarsNode may take the request, load the model
on the spot and answer; the autoscaler sees the load and records the placement.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Endpoint:
    address: str  # host:port
    node: str = ""


@dataclass
class RouteTable:
    slices: dict[str, dict[str, list[tuple[Endpoint, bool]]]] = field(default_factory=dict)  # model -> slice -> eps
    model_nodes: dict[str, str] = field(default_factory=dict)  # model -> TarsNode
    node_agents: dict[str, list[Endpoint]] = field(default_factory=dict)  # TarsNode -> ready agents
    in_flight: dict[str, int] = field(default_factory=dict)
    _ticket: itertools.count = field(default_factory=itertools.count)

    def set_slice(self, model: str, slice_name: str, endpoints: list[tuple[Endpoint, bool]]) -> None:
        self.slices.setdefault(model, {})[slice_name] = endpoints

    def drop_slice(self, model: str, slice_name: str) -> None:
        self.slices.get(model, {}).pop(slice_name, None)

    def knows(self, model: str) -> bool:
        return model in self.model_nodes

    def candidates(self, model: str) -> list[Endpoint]:
        """Ready endpoints holding the model; else, for a model at zero, any ready agent of its node."""
        ready = [ep for eps in self.slices.get(model, {}).values() for ep, ok in eps if ok]
        if ready:
            return ready
        return list(self.node_agents.get(self.model_nodes.get(model, ""), []))

    def pick(self, model: str, exclude: Collection[str] = (), avoid: Collection[str] = ()) -> Endpoint | None:
        """Least outstanding requests; ties broken by rotation so equal agents share the load.

        ``avoid`` (ejected agents) are taken only when nothing else is left: a model whose every agent
        was ejected is still tried, as Envoy's panic threshold does, rather than refused outright."""
        options = [ep for ep in self.candidates(model) if ep.address not in exclude]
        options = [ep for ep in options if ep.address not in avoid] or options
        if not options:
            return None
        turn = next(self._ticket) % len(options)
        rotated = options[turn:] + options[:turn]
        return min(rotated, key=lambda ep: self.in_flight.get(ep.address, 0))

    def started(self, endpoint: Endpoint) -> None:
        self.in_flight[endpoint.address] = self.in_flight.get(endpoint.address, 0) + 1

    def finished(self, endpoint: Endpoint) -> None:
        self.in_flight[endpoint.address] = max(0, self.in_flight.get(endpoint.address, 1) - 1)
