"""The shared state behind one interface, and the choice between its two implementations.

- :class:`~liveloop.matchmaker.Matchmaker`: in this process's memory (the default:
  nothing else to start);
- :class:`~liveloop.cluster.node.ClusterMatchmaker`: in Valkey/Redis, shared by every
  node that names the same ``LIVELOOP_REDIS_URL``.

Both take the same messages from connections and answer with the same messages, so the
connection side (:mod:`liveloop.peer`) does not know which one runs.
"""

from __future__ import annotations

from typing import Protocol

import trio

from .config import Settings
from .messages import MatchmakerMessage
from .metrics import Metrics
from .status import Snapshot


class SharedState(Protocol):
    """The queue, the rooms and the cooldowns, as one actor's mailbox."""

    mailbox: trio.MemorySendChannel[MatchmakerMessage]
    """Where connections send Enqueue, Avoid and Withdraw (bounded: senders wait)."""

    confirms: bool
    """Whether a connection must wait for a message's ``applied`` before acking its
    client (:mod:`liveloop.messages`): True when other processes change the same state."""

    @property
    def snapshot(self) -> Snapshot:
        """Recent counts, read without waiting (a hint: the queue-full check)."""

    async def current(self) -> Snapshot:
        """The whole service's counts now (``GET /api/status``)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until cancelled; ready once ``started``."""


def shared_state(settings: Settings, metrics: Metrics | None = None) -> SharedState:
    """The implementation ``settings`` ask for: Redis if ``redis_url`` is set."""
    if settings.redis_url:
        from .cluster.node import ClusterMatchmaker

        return ClusterMatchmaker(settings, metrics)
    from .matchmaker import Matchmaker

    return Matchmaker(settings, metrics)
