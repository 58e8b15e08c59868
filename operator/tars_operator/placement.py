"""Placement: which agents hold a model. A pure function of the model, the agents and what else
they hold, so it can be tested with plain data and re-run at any time with the same answer.

Rules, in order of importance: never exceed an agent's memory; keep replicas where they are unless
an agent is lost, the count shrinks or replicas are stacked beyond an even share (a move costs a
cold load, so only these force one); spread over zones, then nodes;
then prefer the agent with the most free memory. Replicas that fit nowhere are reported, not dropped.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AgentView:
    """An agent as the operator sees it through its Lease and its Node."""

    node: str
    ready: bool
    capacity_mib: int
    zone: str = ""
    address: str = ""
    backend: str = "unknown"
    load: float = 0.0
    loaded: frozenset[str] = field(default_factory=frozenset)
    # False for an agent that has not reported since the operator started: its replicas are kept
    # while it comes back (a restart of everything must not reshuffle), but nothing new goes there.
    accepts_new: bool = True
    loading: bool = False  # usable, but still loading the models placed on it


@dataclass(frozen=True)
class PlacementResult:
    placements: dict[str, int]
    unplaced: int
    moved_from: tuple[str, ...] = ()

    @property
    def placed(self) -> int:
        return sum(self.placements.values())


def place(
    replicas: int,
    memory_mib: int,
    current: dict[str, int],
    agents: list[AgentView],
    used_by_others_mib: dict[str, int],
    warm: frozenset[str] = frozenset(),
) -> PlacementResult:
    """Replicas per node for one model.

    ``current`` is the model's placement now (node -> replicas); ``used_by_others_mib`` is memory
    already promised on each node to other models; ``warm`` names nodes whose agent already has the
    model loaded (it answered a request at zero replicas), preferred so the load is not repeated.
    """
    usable = {a.node: a for a in agents if a.ready}
    free = {node: a.capacity_mib - used_by_others_mib.get(node, 0) for node, a in usable.items()}
    lost = tuple(sorted(node for node in current if node not in usable))

    # Keep what can stay: on a usable agent, within its memory, and no more stacked on one agent than
    # an even spread needs (replicas stacked while few agents were up spread out when more arrive).
    even_share = math.ceil(replicas / len(usable)) if usable else 0
    kept: dict[str, int] = {}
    for node in sorted(current):
        if node in usable:
            fits = max(0, free[node] // memory_mib)
            count = min(current[node], fits, even_share)
            if count:
                kept[node] = count
                free[node] -= count * memory_mib
    kept = _shrink(kept, replicas, usable, free, memory_mib)

    placements = dict(kept)
    needed = replicas - sum(placements.values())
    while needed > 0:
        candidate = _best_candidate(placements, usable, free, memory_mib, warm)
        if candidate is None:
            break
        placements[candidate] = placements.get(candidate, 0) + 1
        free[candidate] -= memory_mib
        needed -= 1
    return PlacementResult(placements=placements, unplaced=max(needed, 0), moved_from=lost)


def _shrink(
    kept: dict[str, int], replicas: int, usable: dict[str, AgentView], free: dict[str, int], memory_mib: int
) -> dict[str, int]:
    """Drops surplus replicas from the most crowded zone, then the busiest node, first."""
    kept = dict(kept)
    while sum(kept.values()) > replicas:
        zones = Counter({usable[n].zone: 0 for n in kept})
        for node, count in kept.items():
            zones[usable[node].zone] += count
        node = max(kept, key=lambda n: (zones[usable[n].zone], kept[n], usable[n].load, n))
        kept[node] -= 1
        free[node] += memory_mib
        if not kept[node]:
            del kept[node]
    return kept


def _best_candidate(
    placements: dict[str, int],
    usable: dict[str, AgentView],
    free: dict[str, int],
    memory_mib: int,
    warm: frozenset[str],
) -> str | None:
    fitting = [node for node in usable if usable[node].accepts_new and free[node] >= memory_mib]
    if not fitting:
        return None
    zone_count = Counter[str]()
    for node, count in placements.items():
        zone_count[usable[node].zone] += count
    # Fewest replicas of this model in the zone, then on the node, then already loaded there, then
    # most free memory, then least busy, then name.
    return min(
        fitting,
        key=lambda n: (zone_count[usable[n].zone], placements.get(n, 0), n not in warm, -free[n], usable[n].load, n),
    )
