"""kopf's start without its quadratic wake-ups.

kopf runs no handler until every indexed object is indexed: it gives each such object a toggle in one
set, and every object's worker (of every watched kind, indexed or not) waits for that set to turn on.
Each toggle added or dropped woke every waiting worker, though the set turns on only when the last
one goes: with 1,000 TarsModels, 100 TarsNodes and their children, a restarted operator spent about
three quarters of its event loop on those wake-ups (py-spy) before its first handler ran.

install() makes adding and dropping a toggle wake the waiters only when it changes the set's state,
the only thing they wait for (ToggleSet.wait_for). kopf's own turn_to and wait_for are unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kopf._cogs.aiokits import aiotoggles

log = logging.getLogger(__name__)


async def _make_toggle(
    self: aiotoggles.ToggleSet, __val: bool = False, *, name: str | None = None
) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggles(self: aiotoggles.ToggleSet, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


async def _drop_toggle(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    await _drop_toggles(self, (toggle,))


def install() -> bool:
    """Patches kopf's ToggleSet; False (and kopf left as it is) if its internals are not as expected."""
    probe = aiotoggles.ToggleSet(all)
    if not all(hasattr(probe, attr) for attr in ("_condition", "_toggles", "make_toggle", "drop_toggle")):
        log.warning("kopf's ToggleSet has changed: its start stays quadratic in the objects it indexes")
        return False
    aiotoggles.ToggleSet.make_toggle = _make_toggle  # type: ignore[method-assign]
    aiotoggles.ToggleSet.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    aiotoggles.ToggleSet.drop_toggles = _drop_toggles  # type: ignore[method-assign]
    return True
