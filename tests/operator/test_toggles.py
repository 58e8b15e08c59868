"""kopf's index-readiness toggles, as toggles.install() leaves them: waiters wake when the set's state
changes, not on every toggle added or dropped (the real kopf ToggleSet, many waiting tasks)."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from tars_operator import toggles

WAITERS = 200
TOGGLES = 200


class CountingSet(aiotoggles.ToggleSet):
    """Counts how often the set's state is looked at: once per waiter woken, plus the patch's own."""

    looks = 0

    def is_on(self) -> bool:
        self.looks += 1
        return super().is_on()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiters_wake_once_when_the_last_toggle_goes() -> None:
    assert toggles.install()
    indexed = CountingSet(all)
    blocker = await indexed.make_toggle(name="blocker")
    woken: list[int] = []

    async def worker(i: int) -> None:
        await indexed.wait_for(True)
        woken.append(i)

    tasks = [asyncio.create_task(worker(i)) for i in range(WAITERS)]
    await _settle()
    objects = [await indexed.make_toggle(name=f"object {i}") for i in range(TOGGLES)]
    await indexed.drop_toggle(blocker)
    for toggle in objects[:-1]:
        await indexed.drop_toggle(toggle)
        await _settle()
    assert woken == []  # one toggle is still off
    await indexed.drop_toggles(objects[-1:])
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert sorted(woken) == list(range(WAITERS))
    # kopf as released looked WAITERS times per toggle added or dropped: 80,000 looks here.
    assert indexed.looks < 5 * (WAITERS + TOGGLES), indexed.looks


async def test_a_set_that_turns_on_or_off_still_wakes_its_waiters() -> None:
    assert toggles.install()
    paused = aiotoggles.ToggleSet(any)  # as kopf's peering pause is
    resumed = asyncio.create_task(paused.wait_for(True))
    await _settle()
    conflict = await paused.make_toggle(True, name="conflict")
    await asyncio.wait_for(resumed, timeout=10)
    freed = asyncio.create_task(paused.wait_for(False))
    await _settle()
    assert not freed.done()
    await paused.drop_toggle(conflict)
    await asyncio.wait_for(freed, timeout=10)
    # An individual toggle turned by kopf (turn_to) still wakes the set's waiters.
    flag = await paused.make_toggle(name="flag")
    on = asyncio.create_task(paused.wait_for(True))
    await _settle()
    await flag.turn_to(True)
    await asyncio.wait_for(on, timeout=10)
