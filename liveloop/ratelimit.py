"""Per-connection rate limits, from the seed: ``request-room`` 1 per 5 s, ``newMessage``
10 per minute, ICE candidates (and every other event) unlimited; and ``get-ice-servers``
10 per minute (each answer signs a TURN credential).

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
from .events import GET_ICE_SERVERS, NEW_MESSAGE, REQUEST_ROOM

MESSAGE_WINDOW = 60.0
"""The sliding window of ``messages_per_minute`` and ``ice_servers_per_minute``, seconds."""


def _round_up(seconds: float) -> float:
    # Never tell a client to retry a hair too early: round up to the millisecond.
    return math.ceil(seconds * 1000) / 1000


class RateLimiter:
    """Decides, per event, whether one connection may act now."""

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self._enabled = settings.rate_limits
        self._room_every = settings.request_room_per
        self._last_room: float | None = None
        self._messages = _Window(settings.messages_per_minute)
        self._ice_servers = _Window(settings.ice_servers_per_minute)
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
            return self._messages.take(now)
        if event == GET_ICE_SERVERS:
            return self._ice_servers.take(now)
        return None

    def carry(self) -> LimiterState:
        """What this limiter has counted, as ages (seconds before now), so that another
        process with another clock can go on from it: the part of a connection state
        recovery record that keeps a person's limits when they recover on another node."""
        now = self._clock()
        return LimiterState(
            last_room_age=None if self._last_room is None else now - self._last_room,
            message_ages=self._messages.ages(now),
            ice_server_ages=self._ice_servers.ages(now))

    def resume(self, state: LimiterState) -> None:
        """Go on from ``state`` (made by :meth:`carry`, here or on another node)."""
        now = self._clock()
        self._last_room = None if state.last_room_age is None else now - state.last_room_age
        self._messages.restore(now, state.message_ages)
        self._ice_servers.restore(now, state.ice_server_ages)


class _Window:
    """At most ``allowed`` events in any ``MESSAGE_WINDOW`` seconds."""

    __slots__ = ("_allowed", "_times")

    def __init__(self, allowed: int) -> None:
        self._allowed = allowed
        # The times of the last accepted events; at most ``allowed`` kept. Made at the
        # first event: most connections never chat, and an empty deque costs about 600
        # bytes.
        self._times: collections.deque[float] | None = None

    def take(self, now: float) -> float | None:
        """Count one event at ``now``: None if allowed, else the seconds to wait."""
        if self._allowed <= 0:
            return MESSAGE_WINDOW
        times = self._times
        if times is None:
            times = self._times = collections.deque(maxlen=self._allowed)
        if len(times) >= self._allowed:
            wait = times[0] + MESSAGE_WINDOW - now
            if wait > 0:
                return _round_up(wait)
        times.append(now)
        return None

    def ages(self, now: float) -> tuple[float, ...]:
        """How long before ``now`` each counted event was."""
        return tuple(now - t for t in self._times or ())

    def restore(self, now: float, ages: tuple[float, ...]) -> None:
        """Count the events ``ages`` (from :meth:`ages`) as if they were here."""
        if ages and self._allowed > 0:
            self._times = collections.deque((now - age for age in ages[-self._allowed:]),
                                            maxlen=self._allowed)


RELAY_WINDOW = 10.0
"""The window of ``relay_budget``, in seconds."""


class RelayBudget:
    """The protective limit on relayed events (offers, answers, ICE candidates, chat) of
    one connection: ``relay_budget`` per ``RELAY_WINDOW`` seconds, as a token bucket that
    holds at most that many and refills evenly. Unlike :class:`RateLimiter` it stays on
    when ``rate_limits`` is off; a budget of 0 means no limit.

    It sits far above what a real call sends (``docs/events.md`` says how it was chosen),
    so it only refuses floods, at the sender, before they fill the partner's outbox.
    """

    __slots__ = ("_capacity", "_clock", "_rate", "_tokens", "_updated")

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self._capacity = float(settings.relay_budget)
        self._rate = self._capacity / RELAY_WINDOW
        self._tokens = self._capacity
        self._updated = -math.inf
        self._clock = clock

    def take(self) -> float | None:
        """Take one relay from the budget: None if allowed, else the seconds after which
        one would be (> 0). A refused relay takes nothing."""
        if not self._capacity:
            return None
        now = self._clock()
        tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if tokens < 1.0:
            self._tokens = tokens
            return _round_up((1.0 - tokens) / self._rate)
        self._tokens = tokens - 1.0
        return None

    def carry(self) -> tuple[float, float] | None:
        """The tokens left and how long ago they were counted (clock-free, for another
        node: connection state recovery), or None if nothing was taken yet."""
        if self._updated == -math.inf:
            return None
        return self._tokens, self._clock() - self._updated

    def resume(self, state: tuple[float, float] | None) -> None:
        """Go on from :meth:`carry` (here or on another node)."""
        if state is not None:
            tokens, age = state
            self._tokens = min(self._capacity, float(tokens))
            self._updated = self._clock() - float(age)


@attrs.frozen
class LimiterState:
    """A rate limiter's counts, clock-free: how long ago each counted event was."""

    last_room_age: float | None
    message_ages: tuple[float, ...]
    ice_server_ages: tuple[float, ...] = ()
