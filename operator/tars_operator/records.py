"""What the operator remembers between reconciles: one record per TarsNode and one per TarsModel.

Everything kept about an object lives in its record, so forgetting the object is one ``pop``; the
handlers forget a record when its object is deleted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from tars_operator.autoscaler import History

Key = tuple[str, str]


@dataclass
class Slot:
    """Coalesces reconciles of one object: one runs, triggers meanwhile fold into one more run."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    dirty: bool = False


@dataclass
class TarsNodeRecord:
    slot: Slot = field(default_factory=Slot)
    # The models of one TarsNode are placed one at a time, each seeing the others' placements.
    placement_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # model key -> (placements, MiB per replica) this process decided, not yet seen back via the watch.
    placed: dict[str, tuple[dict[str, int], int]] = field(default_factory=dict)
    agents_fingerprint: tuple[Any, ...] | None = None
    seen: bool = False  # the TarsNode's first event has been handled
    children_stale: bool = False  # a child changed: apply every child again
    applied_spec: str | None = None  # spec hash and generation last applied
    # (apiVersion, kind, namespace, name) of a child -> (digest, monotonic time) of its last apply.
    applied: dict[tuple[str, str, str | None, str], tuple[str, float]] = field(default_factory=dict)
    status_written: str | None = None  # resourceVersion of the last status this process wrote


@dataclass
class TarsModelRecord:
    slot: Slot = field(default_factory=Slot)
    history: History = field(default_factory=History)
    # EndpointSlices applied last; None until the API has been asked once for what exists.
    slices: set[str] | None = None
    # (apiVersion, kind, namespace, name) of a child -> (digest, monotonic time) of its last apply.
    applied: dict[tuple[str, str, str | None, str], tuple[str, float]] = field(default_factory=dict)
    status_written: str | None = None  # resourceVersion of the last status this process wrote


@dataclass
class Records:
    tarsnodes: dict[Key, TarsNodeRecord] = field(default_factory=dict)
    models: dict[Key, TarsModelRecord] = field(default_factory=dict)

    def tarsnode(self, key: Key) -> TarsNodeRecord:
        return self.tarsnodes.setdefault(key, TarsNodeRecord())

    def model(self, key: Key) -> TarsModelRecord:
        return self.models.setdefault(key, TarsModelRecord())

    def forget_tarsnode(self, key: Key) -> None:
        self.tarsnodes.pop(key, None)

    def forget_model(self, key: Key, tarsnode: str) -> None:
        self.models.pop(key, None)
        if (node := self.tarsnodes.get((key[0], tarsnode))) is not None:
            node.placed.pop(f"{key[0]}/{key[1]}", None)
