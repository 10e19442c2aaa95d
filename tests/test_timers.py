"""The timer actor (liveloop.server.timers), under Trio's autojump clock: the times are
exact and take no time."""

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
async def timers(nursery: trio.Nursery) -> Timers:
    """A running timer actor."""
    actor = Timers()
    await nursery.start(actor.run)
    return actor


Log = list[tuple[str, float]]
"""Who was woken, and when."""


@pytest.fixture
def log() -> Log:
    return []


async def test_wakes_each_at_its_time_in_order(
        timers: Timers, log: Log, autojump_clock: object) -> None:
    start = trio.current_time()
    sleepers = [Sleeper(name, log) for name in "cab"]  # held: the actor holds them weakly
    for sleeper, after in zip(sleepers, (3, 1, 2), strict=True):
        timers.schedule(start + after, sleeper)
    await trio.sleep(5)
    assert [(name, at - start) for name, at in log] == [("a", 1), ("b", 2), ("c", 3)]
    assert len(timers) == 0


async def test_an_earlier_time_cuts_the_current_sleep(
        timers: Timers, log: Log, autojump_clock: object) -> None:
    start = trio.current_time()
    late, early = Sleeper("late", log), Sleeper("early", log)
    timers.schedule(start + 60, late)
    await trio.sleep(1)  # the actor now sleeps until start + 60
    timers.schedule(start + 2, early)
    await trio.sleep(2)
    assert [(name, at - start) for name, at in log] == [("early", 2)]


async def test_a_past_time_wakes_at_once(
        timers: Timers, log: Log, autojump_clock: object) -> None:
    past = Sleeper("past", log)
    timers.schedule(trio.current_time() - 5, past)
    await trio.testing.wait_all_tasks_blocked()
    assert [name for name, _ in log] == ["past"]


def test_never_is_not_kept() -> None:
    timers = Timers()
    timers.schedule(float("inf"), Sleeper("never", []))
    assert len(timers) == 0


async def test_a_sleeper_gone_since_is_skipped(
        timers: Timers, log: Log, autojump_clock: object) -> None:
    kept = Sleeper("kept", log)
    timers.schedule(trio.current_time() + 1, Sleeper("dropped", log))  # no one holds it
    timers.schedule(trio.current_time() + 2, kept)
    await trio.sleep(3)
    assert [name for name, _ in log] == ["kept"]


class Broken:
    def wake(self) -> None:
        raise RuntimeError("bug")


async def test_one_failing_wake_does_not_stop_the_clock(
        timers: Timers, log: Log, autojump_clock: object,
        caplog: pytest.LogCaptureFixture) -> None:
    broken, after = Broken(), Sleeper("after", log)
    timers.schedule(trio.current_time() + 1, broken)
    timers.schedule(trio.current_time() + 2, after)
    await trio.sleep(3)
    assert [name for name, _ in log] == ["after"]
    assert "failed to wake" in caplog.text
