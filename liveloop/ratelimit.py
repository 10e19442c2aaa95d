"""Per-connection rate limits, from the seed: ``request-room`` 1 per 5 s, ``newMessage``
10 per minute, ICE candidates (and every other event) unlimited.

The limiter belongs to one connection's handler and is only used from that connection's
task, so it needs no lock. Time comes from an injected clock (``trio.current_time`` in
production), so tests under Trio's ``autojump_clock`` take no real time.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable

import attrs

from .config import Settings
from .events import NEW_MESSAGE, REQUEST_ROOM

MESSAGE_WINDOW = 60.0
"""The sliding window of ``messages_per_minute``, in seconds."""


def _round_up(seconds: float) -> float:
    # Never tell a client to retry a hair too early: round up to the millisecond.
    return math.ceil(seconds * 1000) / 1000


class RateLimiter:
    """Decides, per event, whether one connection may act now."""

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self._enabled = settings.rate_limits
        self._room_every = settings.request_room_per
        self._last_room: float | None = None
        self._messages_allowed = settings.messages_per_minute
        # The times of the last accepted messages; at most ``messages_per_minute`` kept.
        # Made at the first chat message: most connections never chat, and an empty
        # deque costs about 600 bytes.
        self._messages: collections.deque[float] | None = None
        self._clock = clock

    def check(self, event: str) -> float | None:
        """Take one ``event`` from the budget: None if allowed (and counted), else the
        seconds after which the same event would be allowed (> 0). A refused event is not
        counted. Events without a limit are always allowed."""
        if not self._enabled:
            return None
        now = self._clock()
        if event == REQUEST_ROOM:
            if self._last_room is not None:
                wait = self._last_room + self._room_every - now
                if wait > 0:
                    return _round_up(wait)
            self._last_room = now
            return None
        if event == NEW_MESSAGE:
            if self._messages_allowed <= 0:
                return MESSAGE_WINDOW
            messages = self._messages
            if messages is None:
                messages = self._messages = collections.deque(maxlen=self._messages_allowed)
            if len(messages) >= self._messages_allowed:
                wait = messages[0] + MESSAGE_WINDOW - now
                if wait > 0:
                    return _round_up(wait)
            messages.append(now)
            return None
        return None

    def carry(self) -> LimiterState:
        """What this limiter has counted, as ages (seconds before now), so that another
        process with another clock can go on from it: the part of a connection state
        recovery record that keeps a person's limits when they recover on another node."""
        now = self._clock()
        return LimiterState(
            last_room_age=None if self._last_room is None else now - self._last_room,
            message_ages=tuple(now - t for t in self._messages or ()))

    def resume(self, state: LimiterState) -> None:
        """Go on from ``state`` (made by :meth:`carry`, here or on another node)."""
        now = self._clock()
        self._last_room = None if state.last_room_age is None else now - state.last_room_age
        if state.message_ages:
            self._messages = collections.deque(
                (now - age for age in state.message_ages[-self._messages_allowed:]),
                maxlen=max(1, self._messages_allowed))


@attrs.frozen
class LimiterState:
    """A rate limiter's counts, clock-free: how long ago each counted event was."""

    last_room_age: float | None
    message_ages: tuple[float, ...]
