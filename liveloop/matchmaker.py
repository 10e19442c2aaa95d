"""The matchmaker actor: the one task that owns the waiting queue and the pair cooldowns.

It wraps the pure :class:`~liveloop.pairing.Lobby` and talks only through messages: its
bounded mailbox receives :data:`~liveloop.messages.MatchmakerMessage` in order (so a
connection's ``Enqueue`` followed by its ``Withdraw`` always ends with the person gone),
and it answers with ``socket.post``, which never blocks. Rooms are started in the
matchmaker's own nursery: when the matchmaker ends, its rooms end with it.

Failure policy: an exception in the matchmaker propagates (everything depends on it, so
the process should end rather than answer without matching); an exception in a room is
contained here: the room ends, both members are told as if the other had left, and the
rest goes on.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import secrets

import trio

from .config import Settings
from .errors import ErrorCode
from .messages import (
    Arrived,
    Avoid,
    Away,
    Enqueue,
    Hangup,
    Matched,
    MatchmakerMessage,
    Refused,
    Returned,
    RoomClosed,
    RoomMessage,
    Withdraw,
)
from .metrics import Metrics
from .pairing import Admission, Lobby
from .room import INBOX_SIZE, Room
from .status import Snapshot

log = logging.getLogger(__name__)

MAILBOX_SIZE = 1024
"""Messages the matchmaker's mailbox holds before connections sending to it wait."""

_BATCH = 64
"""Messages handled before the next pairing pass, at most."""


def new_room_id() -> str:
    """An unguessable room id (96 random bits, URL-safe)."""
    return secrets.token_urlsafe(12)


class Matchmaker:
    """The matchmaker actor. Send it messages through :attr:`mailbox`; start :meth:`run`."""

    confirms = False
    """Acks need not wait: this mailbox's order is the order of every change."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics if metrics is not None else Metrics(enabled=False)
        self._queued_at: dict[str, float] = {}
        """When each queued person joined, for liveloop_time_to_match_seconds."""
        self.mailbox: trio.MemorySendChannel[MatchmakerMessage]
        self.mailbox, self._inbox = trio.open_memory_channel[MatchmakerMessage](MAILBOX_SIZE)
        self._lobby: Lobby[Enqueue] = Lobby(
            max_queue=settings.max_queue,
            cooldown=settings.pair_cooldown,
            new_room_id=new_room_id,
            alive=lambda request: request.member.socket.connected,
            present=lambda request: request.member.socket.present,
        )
        self._room_inboxes: dict[str, trio.MemorySendChannel[RoomMessage]] = {}
        self._snapshot = Snapshot()
        self._rooms: trio.Nursery | None = None

    @property
    def snapshot(self) -> Snapshot:
        """The counts as of the last message handled; safe to read from any task."""
        return self._snapshot

    async def current(self) -> Snapshot:
        """The counts now: the snapshot (this process is the whole service)."""
        return self._snapshot

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Handle messages, in order, until cancelled. Rooms run in a nursery owned here.
        Raises whatever goes wrong in the matchmaker itself."""
        async with trio.open_nursery() as rooms:
            self._rooms = rooms
            task_status.started()
            with self._inbox:
                while True:
                    message: MatchmakerMessage | None = None
                    # Wake up when a cooldown between two waiting people ends.
                    wake_at = self._lobby.wake_at
                    with trio.move_on_at(math.inf if wake_at is None else wake_at):
                        message = await self._inbox.receive()
                    if message is not None:
                        await self._handle(message)
                        # Under load, take what else is waiting before pairing and
                        # publishing once for all of it: same order, less work per message.
                        for _ in range(_BATCH - 1):
                            try:
                                message = self._inbox.receive_nowait()
                            except trio.WouldBlock:
                                break
                            await self._handle(message)
                    self._pair()
                    self._publish()

    async def _handle(self, message: MatchmakerMessage) -> None:
        if isinstance(message, Enqueue):
            admission = self._lobby.enqueue(message.member.sid, message)
            if admission is Admission.QUEUED:
                self._queued_at[message.member.sid] = trio.current_time()
            elif admission is Admission.FULL:
                message.member.socket.post(Refused(
                    message.ticket, ErrorCode.QUEUE_FULL,
                    "the queue is full, try again later"))
        elif isinstance(message, Returned | Away | Arrived):
            # Presence is read from the socket: the pairing pass that follows every
            # batch sees who is there.
            pass
        elif isinstance(message, Avoid):
            self._lobby.avoid(message.first, message.second, trio.current_time())
        elif isinstance(message, Withdraw):
            room_id = self._lobby.withdraw(message.sid)
            self._queued_at.pop(message.sid, None)
            inbox = self._room_inboxes.get(room_id) if room_id is not None else None
            if inbox is not None:
                # A room never blocks, so this wait is short. A room that has ended
                # already fails the send at once: its RoomClosed is on its way.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await inbox.send(Hangup(message.sid, message.reason))
        else:
            self._lobby.close_room(message.room_id)
            self._room_inboxes.pop(message.room_id, None)

    def _pair(self) -> None:
        assert self._rooms is not None
        now = trio.current_time()
        for pairing in self._lobby.match(now):
            first, second = pairing.first.member, pairing.second.member
            for sid in (first.sid, second.sid):
                since = self._queued_at.pop(sid, None)
                if since is not None:
                    self._metrics.matched(now - since)
            send, receive = trio.open_memory_channel[RoomMessage](INBOX_SIZE)
            room = Room(pairing.room_id, first, second, self._settings, receive)
            self._room_inboxes[room.room_id] = send
            # Matched is posted before the room can relay anything, and each connection's
            # mailbox is FIFO: match-done always precedes everything else of this room.
            first.socket.post(Matched(pairing.first.ticket, room.room_id, send,
                                      partner=second, initiator=True))
            second.socket.post(Matched(pairing.second.ticket, room.room_id, send,
                                       partner=first, initiator=False))
            self._rooms.start_soon(self._run_room, room, name=f"room {room.room_id}")

    async def _run_room(self, room: Room) -> None:
        """Run one room; contain its failure; tell the matchmaker when it is over."""
        try:
            await room.run()
        except Exception:
            log.exception("room crashed; ending it", extra={"room": room.room_id})
            room.abandon()
        # The room's inbox is closed by now, so nobody waits on it while we wait here.
        await self.mailbox.send(RoomClosed(room.room_id))

    def _publish(self) -> None:
        lobby = self._lobby
        names = itertools.islice((request.member.name for request in lobby.waiting()),
                                 self._settings.status_users)
        self._snapshot = Snapshot(queue_size=lobby.queue_size, queue_users=tuple(names),
                                  rooms_active=lobby.rooms_active,
                                  rooms_total=lobby.rooms_total)

    # -- for tests and diagnostics -------------------------------------------------------

    def where(self, sid: str) -> str | None:
        """``"queue"``, a room id, or None: where the matchmaker believes ``sid`` is."""
        if self._lobby.is_queued(sid):
            return "queue"
        return self._lobby.room_of(sid)

    @property
    def lobby(self) -> Lobby[Enqueue]:
        """The pure state, read-only by convention (tests check its invariants)."""
        return self._lobby

