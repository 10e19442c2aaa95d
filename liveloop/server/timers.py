"""The timer actor: one task that keeps every session's clock for an :class:`EngineServer`.

Sessions sleep on their mailbox alone, and this task wakes each one when its next timer
(ping due, pong overdue, the app's deadline) comes. Why not a deadline per sleep: a
session sleeps after every message it handles, and entering and leaving a cancel scope
each time cost about a seventh of the server's CPU at relay load; a timer changes a few
times a minute.

The heap is bounded: a session adds an entry only when it needs waking earlier than the
earliest one it has (see :meth:`EngineSession._schedule`), and entries leave at their
time, so each session holds a few at most. Entries hold their sleeper weakly, so a
closed session is not kept for its entries' sake: it is freed by the next garbage
collection (it and its app refer to each other), and its entries are dropped at their
time.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import weakref
from typing import Protocol

import trio

log = logging.getLogger(__name__)


class Sleeper(Protocol):
    """What the timer actor wakes."""

    def wake(self) -> None:
        """A time this sleeper asked for has come; called in the timer task, must not
        block."""


class Timers:
    """A heap of (time, sleeper); :meth:`run` is the task that serves it."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, weakref.ref[Sleeper]]] = []
        self._order = itertools.count()
        self._sleep: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, when: float, sleeper: Sleeper) -> None:
        """Call ``sleeper.wake()`` at Trio time ``when`` (at once if it has passed)."""
        if when == math.inf:
            return
        heapq.heappush(self._heap, (when, next(self._order), weakref.ref(sleeper)))
        sleep = self._sleep
        if sleep is not None and when < sleep.deadline:
            sleep.deadline = when

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Wake sleepers at their times, until cancelled."""
        heap = self._heap
        task_status.started()
        while True:
            with trio.CancelScope() as sleep:
                sleep.deadline = heap[0][0] if heap else math.inf
                self._sleep = sleep
                await trio.sleep_forever()
            self._sleep = None
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                sleeper = heapq.heappop(heap)[2]()
                if sleeper is None:
                    continue  # gone since
                try:
                    sleeper.wake()
                except Exception:  # one sleeper's bug must not stop everyone's clock
                    log.exception("timers: %r failed to wake", sleeper)
