"""The messages Live Loop's actors send each other; all frozen, none carries mutable state.

Who sends what, and through which channel:

- connection -> matchmaker (``await send`` on the matchmaker's bounded mailbox: a full
  mailbox slows down that connection only): :class:`Enqueue`, :class:`Avoid`,
  :class:`Withdraw`, :class:`Returned`, :class:`Away`, :class:`Arrived`; a room's end
  -> matchmaker: :class:`RoomClosed`.
- connection or matchmaker -> room (``await send`` on the room's bounded inbox; a room
  never blocks, so the inbox drains at CPU speed; once the room has ended the send fails
  at once and the sender drops the message): :class:`Hangup`.
- matchmaker or room -> connection (``socket.post``, which never blocks; a connection
  whose mailbox is full is disconnected by the server layer): :class:`Matched`,
  :class:`Refused`, :class:`RoomEnded`.
- connection -> its partner's connection, while both are in one room (``socket.post``):
  :class:`Deliver`, a relayed event. A room's members are fixed for its life, so the
  sender reaches its partner without a hop through the room's task.

:class:`Enqueue`, :class:`Withdraw` and :class:`Hangup` may carry ``applied``, a
:class:`Receipt` the shared state sets once the change is applied where every node sees
it (with Redis: the script has run), or once it could not be (Redis out of reach:
``failed``). The one mutable thing in a message, on purpose: it is how a connection acks
its client only after the change is done, and refuses the ack when it could not be
(docs/events.md, "What an ack means"). The in-process matchmaker and rooms never need it
(their mailboxes' order is the order of changes), and it is None there.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs
import trio

from .errors import ErrorCode
from .server.api import Socket
from .wire.socketio import event_json


class Receipt:
    """What a connection waits for before acking a change: set once, when the change is
    applied or will not be (see the module's docstring). ``failed`` says the shared state
    could not be reached for it: whether it happened is unknown, so the connection
    refuses its event ``unavailable`` and closes (docs/events.md, "What an ack means")."""

    __slots__ = ("_done", "failed")

    def __init__(self) -> None:
        self._done = trio.Event()
        self.failed = False

    def set(self, *, failed: bool = False) -> None:
        """The change is applied, or nobody will apply it; the first call decides."""
        if not self._done.is_set():
            self.failed = failed
            self._done.set()

    def is_set(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> None:
        await self._done.wait()


@attrs.frozen
class Member:
    """A person as the matchmaker and rooms know them: socket id, profile, and socket."""

    sid: str
    name: str
    image: str
    socket: Socket = attrs.field(eq=False, repr=False)


class HangupReason(enum.StrEnum):
    """Why a member leaves a room."""

    STOP = "stop"
    NEXT = "next"
    DISCONNECT = "disconnect"


# -- to the matchmaker -----------------------------------------------------------------


@attrs.frozen
class Enqueue:
    """Queue ``member``. ``ticket`` is echoed in :class:`Matched` or :class:`Refused` so the
    connection can recognise answers to a request it has since withdrawn."""

    member: Member
    ticket: int
    applied: Receipt | None = attrs.field(default=None, eq=False, repr=False)
    """Set once the change is applied (see the module's docstring), if given."""


@attrs.frozen
class Avoid:
    """Do not pair these two again while the pair cooldown lasts (sent on "Next")."""

    first: str
    second: str


@attrs.frozen
class Withdraw:
    """``sid`` stops waiting (stop-call while queued) or is gone (disconnect). If it was
    already paired, its room is ended as if it had hung up for ``reason``."""

    sid: str
    reason: HangupReason
    applied: Receipt | None = attrs.field(default=None, eq=False, repr=False)
    """Set once the change is applied (see the module's docstring), if given."""


@attrs.frozen
class RoomClosed:
    """A room's task has ended (normally or not): forget it."""

    room_id: str


@attrs.frozen
class Returned:
    """``sid``, queued, is back after a lost connection: pair them if someone waits."""

    sid: str


@attrs.frozen
class Away:
    """``sid``'s connection is lost and it may come back (connection state recovery):
    while away it keeps its queue place but is not paired. The in-process matchmaker
    asks the socket instead (``present``); the Redis one marks the record."""

    sid: str


@attrs.frozen
class Arrived:
    """``sid`` recovered on this node after living on another (its record was handed
    over): the shared state now names this node for it, and its partner's
    node is told (docs/cluster.md)."""

    sid: str


MatchmakerMessage = Enqueue | Avoid | Withdraw | RoomClosed | Returned | Away | Arrived


def release(message: object, *, failed: bool = False) -> None:
    """Set ``message``'s ``applied`` if it has one: it is applied, or nobody will apply
    it (its room has ended, the matchmaker has stopped), so its sender need not wait;
    ``failed``: Redis could not be reached for it (the sender's ack is then refused)."""
    applied = getattr(message, "applied", None)
    if applied is not None:
        applied.set(failed=failed)


# -- to a room -------------------------------------------------------------------------


@attrs.frozen
class Hangup:
    """Member ``sender`` leaves: the room ends and the partner is told."""

    sender: str
    reason: HangupReason
    applied: Receipt | None = attrs.field(default=None, eq=False, repr=False)
    """Set once the change is applied (see the module's docstring), if given."""


RoomMessage = Hangup


# -- to a connection (socket.post) -----------------------------------------------------


@attrs.frozen
class Matched:
    """You are paired: your room, how to reach it, who is on the other side."""

    ticket: int
    room_id: str
    inbox: trio.MemorySendChannel[RoomMessage] = attrs.field(eq=False, repr=False)
    partner: Member
    initiator: bool


@attrs.frozen
class Refused:
    """The matchmaker could not queue you (the queue is full)."""

    ticket: int
    code: ErrorCode
    message: str


@attrs.frozen
class Deliver:
    """Emit ``event`` with ``payload`` if ``room_id`` is still your room.

    A relay that came from another node carries ``args`` instead: the JSON text of
    ``[event, payload]`` as the sender's node encoded it for the client (``payload`` is
    then None). It is written to the client as it is (:meth:`~liveloop.server.api.Socket
    .emit_json`), neither decoded nor encoded again here."""

    room_id: str
    event: str
    payload: dict[str, Any] | None = attrs.field(eq=False)
    args: str | None = attrs.field(default=None, eq=False, repr=False)

    def json(self) -> str:
        """The JSON text of ``[event, payload]``, as the client gets it."""
        if self.args is not None:
            return self.args
        return event_json(self.event, (self.payload,))


@attrs.frozen
class PartnerMoved:
    """The partner in ``room_id`` now lives behind ``socket`` (they recovered on another
    node): relay there from now on, after a :class:`Fence` through the old way."""

    room_id: str
    socket: Socket = attrs.field(eq=False, repr=False)


@attrs.frozen
class Fence:
    """The last thing a partner sends the old way after :class:`PartnerMoved`: once it
    has come through, nothing of theirs is still on the old way."""

    room_id: str


@attrs.frozen
class RoomEnded:
    """Your partner left ``room_id``; go back to the queue if ``requeue``."""

    room_id: str
    requeue: bool
