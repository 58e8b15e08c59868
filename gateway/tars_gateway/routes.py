"""Where a model's requests can go, and which endpoint takes the next one. Pure, no I/O.

Endpoints come from the model's EndpointSlices (agents holding it; ready when loaded). A model at
zero replicas has none: then, as Knative's activator does, the request wakes the model on one agent
of its TarsNode, chosen as placement would choose (the most memory left after the models placed
there, then the least busy), which loads the model on the spot and answers. Requests arriving while
it wakes go to that same agent, so a burst from zero loads the model once, not on every agent; the
operator then places the model where it is already loaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection
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
    agent_capacity: dict[str, int] = field(default_factory=dict)  # agent address -> MiB offered to models
    # model -> (MiB per replica, node -> replicas placed): what placement counts as promised memory.
    model_memory: dict[str, tuple[int, dict[str, int]]] = field(default_factory=dict)
    waking: dict[str, str] = field(default_factory=dict)  # model at zero -> agent address it is woken on
    in_flight: dict[str, int] = field(default_factory=dict)
    _ticket: itertools.count = field(default_factory=itertools.count)
    # Called by changed(): requests held for an agent look again at once instead of polling the table.
    listeners: list[Callable[[], None]] = field(default_factory=list)

    def changed(self) -> None:
        """Whoever updates the table (discovery) says so here."""
        for listener in list(self.listeners):
            listener()

    def set_slice(self, model: str, slice_name: str, endpoints: list[tuple[Endpoint, bool]]) -> None:
        self.slices.setdefault(model, {})[slice_name] = endpoints

    def drop_slice(self, model: str, slice_name: str) -> None:
        self.slices.get(model, {}).pop(slice_name, None)

    def knows(self, model: str) -> bool:
        return model in self.model_nodes

    def candidates(self, model: str) -> list[Endpoint]:
        """Ready endpoints holding the model; else, for a model at zero, its TarsNode's ready agents in
        the order placement would choose them, the agent it is already waking on first."""
        ready = self._ready(model)
        if ready:
            self.waking.pop(model, None)
            return ready
        agents = self.node_agents.get(self.model_nodes.get(model, ""), [])
        woken = self.waking.get(model)
        return sorted(agents, key=lambda ep: (ep.address != woken, *self._placement_rank(ep)))

    def _ready(self, model: str) -> list[Endpoint]:
        return [ep for eps in self.slices.get(model, {}).values() for ep, ok in eps if ok]

    def _placement_rank(self, agent: Endpoint) -> tuple[int, int, str]:
        used = sum(mib * placed.get(agent.node, 0) for mib, placed in self.model_memory.values())
        free = self.agent_capacity.get(agent.address, 0) - used
        return -free, self.in_flight.get(agent.address, 0), agent.node

    def pick(self, model: str, exclude: Collection[str] = (), avoid: Collection[str] = ()) -> Endpoint | None:
        """Least outstanding requests; ties broken by rotation so equal agents share the load.

        ``avoid`` (ejected agents) are taken only when nothing else is left: a model whose every agent
        was ejected is still tried, as Envoy's panic threshold does, rather than refused outright."""
        options = [ep for ep in self.candidates(model) if ep.address not in exclude]
        options = [ep for ep in options if ep.address not in avoid] or options
        if not options:
            return None
        if not self._ready(model):
            # Waking from zero: the first choice, and the same one while the model loads there.
            self.waking[model] = options[0].address
            return options[0]
        turn = next(self._ticket) % len(options)
        rotated = options[turn:] + options[:turn]
        return min(rotated, key=lambda ep: self.in_flight.get(ep.address, 0))

    def started(self, endpoint: Endpoint) -> None:
        self.in_flight[endpoint.address] = self.in_flight.get(endpoint.address, 0) + 1

    def finished(self, endpoint: Endpoint) -> None:
        self.in_flight[endpoint.address] = max(0, self.in_flight.get(endpoint.address, 1) - 1)
