"""Connection state recovery: what a socket keeps so that a client can come back to it.

With recovery on, every socket that did not opt out gets a :class:`RecoveryRecord`: its
private session id (``pid``), its socket id, the application's state (the handler, which
for Live Loop is the :class:`~liveloop.peer.Peer`: phase, room, partner, rate limits,
recent event ids) and a bounded history of the EVENT packets sent to it, each with the
offset the client echoes back. :class:`RecoveryStore` is the small interface the server
layer reaches records through; :class:`MemoryStore` keeps them in this process. A shared
store (Redis) implements the same four methods, holding a serialised record (see
``docs/recovery.md``).

The wire, as the official ``socket.io-client`` 4.6+ speaks it:

- the CONNECT answer is ``{"sid", "pid"}``;
- every EVENT sent without an ack id carries its offset (a decimal string, unique per
  ``pid``) as its last argument;
- the client's next CONNECT carries ``{"pid", "offset"}`` in its auth (offset absent if it
  never received an event); both are removed before the application sees the auth.

The history is a ring while the client is present (the oldest packets leave first, so a
long-lived connection never loses its recovery because its offset aged out: the state is
recovered and only what left the ring is missing). While the client is away, packets
emitted for it are kept too; if those alone would exceed ``recovery_packets`` or
``recovery_bytes``, the recovery is given up and the person is treated as gone.
"""

from __future__ import annotations

import base64
import collections
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import attrs

from ..config import Settings

Frames = tuple[str | bytes, ...]
"""The Engine.IO frames of one Socket.IO packet (one text frame, or a binary packet's)."""

RECOVERABLE = frozenset({"transport close", "transport error", "ping timeout"})
"""The close reasons after which a socket waits for its client: a lost transport. A
client's own disconnect, a protocol error, an overflow or a shutdown ends it at once."""


def new_pid() -> str:
    """A private session id: 120 random bits, URL-safe. Never shown to anyone else."""
    return secrets.token_urlsafe(15)


class History:
    """The EVENT packets sent to one client, with their sequence numbers, bounded.

    Sequence numbers start at 1; the offset on the wire is ``str(seq)``. Packets stamped
    while the client is away (from :meth:`mark_away`) are never evicted: if they alone
    exceed a bound, :meth:`keep` says so and the caller gives the recovery up.
    """

    __slots__ = ("_away_from", "_bytes", "_entries", "_max_bytes", "_max_packets", "_seq")

    def __init__(self, max_packets: int, max_bytes: int) -> None:
        self._max_packets = max_packets
        self._max_bytes = max_bytes
        self._seq = 0
        # Made at the first packet: most idle connections never get one.
        self._entries: collections.deque[tuple[int, int, Frames | str]] | None = None
        self._bytes = 0
        self._away_from: int | None = None

    def stamp(self) -> str:
        """The offset of the next packet."""
        self._seq += 1
        return str(self._seq)

    def keep(self, frames: Frames | str) -> bool:
        """Keep the packet just stamped: its frames, or its one text frame (the hot path:
        no tuple). False if packets kept while away now exceed a bound (the caller gives
        the recovery up); the packet is kept either way."""
        entries = self._entries
        if entries is None:
            entries = self._entries = collections.deque()
        size = len(frames) if type(frames) is str else sum(len(f) for f in frames)
        entries.append((self._seq, size, frames))
        self._bytes += size
        while len(entries) > self._max_packets or self._bytes > self._max_bytes:
            oldest = entries[0][0]
            if self._away_from is not None and oldest >= self._away_from:
                return False
            self._bytes -= entries.popleft()[1]
        return True

    def mark_away(self) -> None:
        """From now on packets are kept for a client that is not there."""
        if self._away_from is None:
            self._away_from = self._seq + 1

    def mark_back(self) -> None:
        self._away_from = None

    def after(self, offset: object) -> tuple[list[str | bytes], bool]:
        """The frames of every packet after ``offset`` (what the client last saw), in
        order, and whether that is complete. ``offset`` None (the client never received
        an event) or not one of ours: everything held. Incomplete when packets the
        client missed have left the ring already."""
        entries = self._entries or ()
        first_held = entries[0][0] if entries else self._seq + 1
        seen = 0
        if isinstance(offset, str) and offset.isdigit() and len(offset) <= 18:
            seen = min(int(offset), self._seq)
        frames: list[str | bytes] = []
        for seq, _, packet in entries:
            if seq > seen:
                if type(packet) is str:
                    frames.append(packet)
                else:
                    frames.extend(packet)
        return frames, seen + 1 >= first_held

    def export(self) -> tuple[int, list[tuple[int, Frames | str]]]:
        """The sequence number of the last packet, and every packet held with its own:
        what another node needs to go on counting and to replay (:meth:`restore`)."""
        return self._seq, [(seq, frames) for seq, _, frames in self._entries or ()]

    def restore(self, seq: int, entries: Sequence[tuple[int, Frames | str]]) -> None:
        """Go on from another node's :meth:`export`: the same offsets, the same packets
        (within this history's bounds: the oldest leave first)."""
        self._seq = seq
        for number, frames in entries:
            size = len(frames) if type(frames) is str else sum(len(f) for f in frames)
            if self._entries is None:
                self._entries = collections.deque()
            self._entries.append((number, size, frames))
            self._bytes += size
        while self._entries and (len(self._entries) > self._max_packets
                                 or self._bytes > self._max_bytes):
            self._bytes -= self._entries.popleft()[1]

    @property
    def packets(self) -> int:
        return len(self._entries or ())

    @property
    def size(self) -> int:
        return self._bytes


class RecoveryRecord:
    """Everything a recovery needs, in one object. ``state`` is the application's
    handler; in this process it is the live object, a shared store serialises it."""

    __slots__ = ("history", "namespace", "pid", "sid", "state")

    def __init__(self, pid: str, sid: str, namespace: str, settings: Settings) -> None:
        self.pid = pid
        self.sid = sid
        self.namespace = namespace
        self.history = History(settings.recovery_packets, settings.recovery_bytes)
        self.state: object = None


@attrs.frozen
class Exported:
    """A record on its way to another node: everything a recovery there needs, as
    plain data (the handler's state is what its ``export_state`` gave)."""

    pid: str
    sid: str
    namespace: str
    seq: int
    entries: tuple[tuple[int, Frames | str], ...]
    state: Any

    def to_json(self) -> list[Any]:
        """JSON-able; binary frames as ``{"b": base64}``."""
        entries = [[seq, frames if type(frames) is str else
                    [f if isinstance(f, str) else {"b": base64.b64encode(f).decode()}
                     for f in frames]] for seq, frames in self.entries]
        return [self.pid, self.sid, self.namespace, self.seq, entries, self.state]

    @classmethod
    def from_json(cls, fields: Any) -> Exported:
        """The inverse of :meth:`to_json`; raises ValueError/TypeError on bad input."""
        pid, sid, namespace, seq, entries, state = fields
        decoded: list[tuple[int, Frames | str]] = []
        for number, frames in entries:
            if isinstance(frames, str):
                decoded.append((int(number), frames))
            else:
                decoded.append((int(number), tuple(
                    f if isinstance(f, str) else base64.b64decode(f["b"]) for f in frames)))
        return cls(str(pid), str(sid), str(namespace), int(seq), tuple(decoded), state)


Exporter = Callable[[str, str, Callable[[Exported], Callable[[object], None] | None]],
                    Awaitable[bool]]
"""How a store asks the server for one of its records on behalf of another node:
``export(pid, namespace, hand_over)`` claims the socket of ``pid`` here; once its
handler is let go, ``hand_over(exported)`` sends it on (synchronously) and returns where
later posts to the old socket go (or None: the hand-over failed, the socket ends here).
True if the socket was handed over."""


class RecoveryStore(Protocol):
    """Where records live between a transport's loss and the client's return."""

    def create(self, sid: str, namespace: str) -> RecoveryRecord:
        """A new record with a fresh ``pid``, held from now on."""

    def get(self, pid: str) -> RecoveryRecord | None:
        """The record of ``pid`` if it is held (connected or away), else None."""

    def put(self, record: RecoveryRecord) -> None:
        """Hold ``record`` (one that came from another node) from now on."""

    def forget(self, pid: str) -> None:
        """The socket is gone for good: drop its record. Idempotent."""

    async def claim_elsewhere(self, pid: str, namespace: str) -> Exported | None:
        """A ``pid`` this process does not hold: claim its record from wherever it is
        (another node), so that it is held here and nowhere else; None if nobody has
        it. The in-process store has no elsewhere."""

    def serve(self, export: Exporter) -> None:
        """Other nodes' claims for records held here are answered through ``export``."""

    def __len__(self) -> int: ...


class MemoryStore:
    """The in-process :class:`RecoveryStore`: a dict from ``pid`` to record."""

    __slots__ = ("_records", "_settings")

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._records: dict[str, RecoveryRecord] = {}

    def new_pid(self, sid: str) -> str:
        return new_pid()

    def create(self, sid: str, namespace: str) -> RecoveryRecord:
        record = RecoveryRecord(self.new_pid(sid), sid, namespace, self._settings)
        self._records[record.pid] = record
        return record

    def put(self, record: RecoveryRecord) -> None:
        self._records[record.pid] = record

    async def claim_elsewhere(self, pid: str, namespace: str) -> Exported | None:
        return None

    def serve(self, export: Exporter) -> None:
        pass

    def get(self, pid: str) -> RecoveryRecord | None:
        return self._records.get(pid)

    def forget(self, pid: str) -> None:
        self._records.pop(pid, None)

    def __len__(self) -> int:
        return len(self._records)


def frames_of(parts: Sequence[str | bytes]) -> Frames:
    """Socket.IO encoder output as Engine.IO frames (text gets its MESSAGE digit)."""
    return tuple("4" + part if isinstance(part, str) else part for part in parts)
