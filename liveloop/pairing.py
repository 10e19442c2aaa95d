"""The matchmaking rules as a pure object: no Trio, no I/O, time passed in.

:class:`Lobby` is the matchmaker actor's state. It knows who waits (in arrival order),
who sits in which room, and which pairs are cooling down after a "Next". Because it is
pure, property tests drive it with arbitrary sequences of arrivals, departures and clock
jumps.

Invariants kept after every method call:
- a person is queued at most once and is never both queued and placed in a room;
- a room has two distinct members, and each member's placement names that room;
- after :meth:`Lobby.match`, no two queued people could be paired (every queued pair is
  cooling down), which keeps the queue short and the scan cheap.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import attrs

E = TypeVar("E")


class Admission(enum.Enum):
    """What :meth:`Lobby.enqueue` did."""

    QUEUED = "queued"
    ALREADY_QUEUED = "already queued"
    FULL = "full"
    GONE = "gone"


@attrs.frozen
class Pairing(Generic[E]):
    """A new room: ``first`` waited longer (and starts the call), ``second`` arrived later."""

    room_id: str
    first_sid: str
    first: E
    second_sid: str
    second: E


class Lobby(Generic[E]):
    """Waiting queue, room placements and pair cooldowns, for entries of type ``E``."""

    def __init__(
        self,
        *,
        max_queue: int,
        cooldown: float,
        new_room_id: Callable[[], str],
        alive: Callable[[E], bool] = lambda entry: True,
        present: Callable[[E], bool] = lambda entry: True,
    ) -> None:
        """``alive`` tells whether an entry can still be paired (a connected socket);
        ``present`` whether it can be paired now (an alive entry that is not present, a
        person whose connection is recovering, keeps its place and is skipped)."""
        self._max_queue = max_queue
        self._cooldown = cooldown
        self._new_room_id = new_room_id
        self._alive = alive
        self._present = present
        self._queue: dict[str, E] = {}  # insertion order is arrival order
        self._rooms: dict[str, tuple[str, str]] = {}
        self._placed: dict[str, str] = {}
        self._cool_until: dict[frozenset[str], float] = {}
        # Expiry order equals insertion order (one duration), so a deque prunes in O(1).
        self._cool_order: collections.deque[tuple[float, frozenset[str]]] = collections.deque()
        self._wake_at: float | None = None
        self.rooms_total = 0

    # -- reading -----------------------------------------------------------------------

    @property
    def queue_size(self) -> int:
        return len(self._queue)

    @property
    def rooms_active(self) -> int:
        return len(self._rooms)

    def waiting(self) -> Iterator[E]:
        """The queued entries, longest waiting first."""
        return iter(self._queue.values())

    def is_queued(self, sid: str) -> bool:
        return sid in self._queue

    def room_of(self, sid: str) -> str | None:
        """The room ``sid`` is placed in, if any."""
        return self._placed.get(sid)

    def members(self, room_id: str) -> tuple[str, str] | None:
        return self._rooms.get(room_id)

    def cooling(self, a: str, b: str, now: float) -> bool:
        """Whether ``a`` and ``b`` may not be paired at time ``now``."""
        return self._cool_until.get(frozenset((a, b)), -math.inf) > now

    @property
    def wake_at(self) -> float | None:
        """When a cooldown between two queued people ends (a pairing may become possible),
        as computed by the last :meth:`match`; None if nothing waits on time."""
        return self._wake_at

    # -- changing ----------------------------------------------------------------------

    def enqueue(self, sid: str, entry: E) -> Admission:
        """Queue ``sid`` at the back. Someone already queued keeps their place (with the
        new entry); a dead
        entry is not queued; nobody is queued beyond ``max_queue``. Queuing someone takes
        them out of any room they were placed in (they have left it)."""
        if sid in self._queue:
            # Same place, newest entry: answers must carry the latest request's identity.
            self._queue[sid] = entry
            return Admission.ALREADY_QUEUED
        if not self._alive(entry):
            return Admission.GONE
        if len(self._queue) >= self._max_queue:
            return Admission.FULL
        self._placed.pop(sid, None)
        self._queue[sid] = entry
        return Admission.QUEUED

    def withdraw(self, sid: str) -> str | None:
        """Take ``sid`` out of the queue and out of its room. Returns the room it was
        placed in (which the caller must end), or None."""
        self._queue.pop(sid, None)
        return self._placed.pop(sid, None)

    def close_room(self, room_id: str) -> None:
        """Forget ``room_id``; its members still placed there are placed nowhere."""
        members = self._rooms.pop(room_id, None)
        for sid in members or ():
            if self._placed.get(sid) == room_id:
                del self._placed[sid]

    def avoid(self, a: str, b: str, now: float) -> None:
        """Keep ``a`` and ``b`` apart until ``now + cooldown``."""
        if a == b or self._cooldown <= 0:
            return
        key = frozenset((a, b))
        until = now + self._cooldown
        self._cool_until[key] = until
        self._cool_order.append((until, key))

    def match(self, now: float) -> list[Pairing[E]]:
        """Pair whoever can be paired, first come first served: the longest-waiting person
        gets the longest-waiting partner they are not cooling down with; people cooling
        down are skipped over, not waited for. Dead entries are dropped from the queue.
        Each pair is placed in a new room, returned in creation order."""
        self._expire(now)
        for sid in [sid for sid, entry in self._queue.items() if not self._alive(entry)]:
            del self._queue[sid]
        pairings: list[Pairing[E]] = []
        wake = math.inf
        present = self._present
        order = [sid for sid, entry in self._queue.items() if present(entry)]
        taken: set[str] = set()
        for i, first in enumerate(order):
            if first in taken:
                continue
            for second in order[i + 1:]:
                if second in taken:
                    continue
                until = self._cool_until.get(frozenset((first, second)), -math.inf)
                if until > now:
                    wake = min(wake, until)
                    continue
                taken.update((first, second))
                pairings.append(self._place(first, second))
                break
        self._wake_at = None if wake == math.inf else wake
        return pairings

    def _place(self, first: str, second: str) -> Pairing[E]:
        room_id = self._new_room_id()
        pairing = Pairing(room_id, first, self._queue.pop(first), second,
                          self._queue.pop(second))
        self._rooms[room_id] = (first, second)
        self._placed[first] = room_id
        self._placed[second] = room_id
        self.rooms_total += 1
        return pairing

    def _expire(self, now: float) -> None:
        while self._cool_order and self._cool_order[0][0] <= now:
            until, key = self._cool_order.popleft()
            if self._cool_until.get(key) == until:
                del self._cool_until[key]
