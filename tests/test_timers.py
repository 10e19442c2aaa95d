"""The timer actor (liveloop.server.timers) under Trio's mock clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from liveloop.server.timers import Timers


class Sleeper:
    def __init__(self, name: str, log: list[tuple[str, float]]) -> None:
        self.name = name
        self.log = log

    def wake(self) -> None:
        self.log.append((self.name, trio.current_time()))


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_wakes_each_at_its_time_in_order(nursery: trio.Nursery,
                                               clock: trio.testing.MockClock) -> None:
    timers = Timers()
    await nursery.start(timers.run)
    log: list[tuple[str, float]] = []
    start = trio.current_time()
    timers.schedule(start + 3, Sleeper("c", log))
    timers.schedule(start + 1, Sleeper("a", log))
    timers.schedule(start + 2, Sleeper("b", log))
    await trio.sleep(5)
    assert [(name, at - start) for name, at in log] == [("a", 1), ("b", 2), ("c", 3)]
    assert len(timers) == 0


async def test_an_earlier_time_cuts_the_current_sleep(nursery: trio.Nursery,
                                                      clock: trio.testing.MockClock) -> None:
    timers = Timers()
    await nursery.start(timers.run)
    log: list[tuple[str, float]] = []
    start = trio.current_time()
    timers.schedule(start + 60, Sleeper("late", log))
    await trio.sleep(1)  # the actor now sleeps until start + 60
    timers.schedule(start + 2, Sleeper("early", log))
    await trio.sleep(2)
    assert [(name, at - start) for name, at in log] == [("early", 2)]


async def test_a_past_time_wakes_at_once(nursery: trio.Nursery,
                                         clock: trio.testing.MockClock) -> None:
    timers = Timers()
    await nursery.start(timers.run)
    log: list[tuple[str, float]] = []
    timers.schedule(trio.current_time() - 5, Sleeper("past", log))
    await trio.testing.wait_all_tasks_blocked()
    assert [name for name, _ in log] == ["past"]


def test_never_is_not_kept() -> None:
    timers = Timers()
    timers.schedule(float("inf"), Sleeper("never", []))
    assert len(timers) == 0
