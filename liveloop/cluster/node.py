"""The shared-state implementation on Valkey/Redis: one node's matchmaker actor.

:class:`ClusterMatchmaker` takes the same messages as the in-process
:class:`~liveloop.matchmaker.Matchmaker` and answers connections with the same
messages, so :class:`~liveloop.peer.Peer` works unchanged whichever is running. The
difference is where the state lives: the queue, the rooms, every queued or placed
person's record and the cooldowns are in Redis, changed only by the Lua scripts of
:mod:`.scripts` (each one atomic step), so any number of nodes share them.

Tasks, all children of :meth:`ClusterMatchmaker.run`:

- the actor itself: handles its mailbox in order, one script per message (so a
  connection's ``Enqueue`` followed by its ``Withdraw`` ends with the person gone);
- one task per room with a member here: waits for that member's ``Hangup`` and runs the
  leave script for that room id;
- the subscriber: reads this node's channel and applies what other nodes send;
- the publisher: sends notices for people on other nodes, pipelined;
- the heartbeat: keeps this node's liveness key fresh, declares lost the nodes whose
  key has expired, pairs people whose cooldown has ended, and refreshes the snapshot.

Relays between people on two nodes are one PUBLISH on the partner's node's channel: the
partner's node is in the :class:`RemoteSocket` made when the room was, so no lookup.

Failure policy: if Redis cannot be reached at start, :meth:`run` raises. Afterwards a
failed command is logged and marks the node *dirty* (if it was a connection's change,
that connection's ack is refused ``unavailable``). A node that is dirty, or that finds
its liveness gone (declared lost, or Redis restarted empty), registers afresh, first
clearing whatever it left in Redis, then drops its clients (they reconnect, possibly
elsewhere; :meth:`_rejoin` says why in that order). A node that has not reached Redis
for half of ``node_timeout`` drops its clients at once, before the others can declare it
lost, and registers once Redis answers. docs/cluster.md has the details and what a
Redis restart loses.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import trio

from ..config import Settings
from ..errors import ErrorCode
from ..matchmaker import MAILBOX_SIZE, new_room_id
from ..messages import (
    Arrived,
    Avoid,
    Away,
    Deliver,
    Enqueue,
    Hangup,
    HangupReason,
    Matched,
    MatchmakerMessage,
    Member,
    Refused,
    Returned,
    RoomEnded,
    RoomMessage,
    Withdraw,
    release,
)
from ..metrics import Metrics
from ..room import INBOX_SIZE
from ..server.api import Socket
from ..status import Snapshot
from . import notices as wire
from . import resp, scripts
from .handover import ClusterRecoveryStore, HandoverMixin, _redis_errors
from .notices import (
    ClaimNotice,
    DeliverNotice,
    EndNotice,
    ForwardedNotice,
    HandoverNotice,
    MatchNotice,
    Notice,
    PersonNotice,
)
from .remote import RemoteSocket

log = logging.getLogger(__name__)

PUBLISH_QUEUE = 4096
"""Notices waiting for the publisher before the tasks that make them wait."""

PUBLISH_BATCH = 256
"""Notices published in one pipelined round trip, at most."""

SCAN_LIMIT = 200
"""Queued people a pairing script looks at, longest waiting first (docs/cluster.md)."""

_BATCH = 64
"""Mailbox messages sent to Redis in one pipeline, at most."""

ENDED_REMEMBERED = 10_000
"""Ended room ids a node remembers, to recognise a match notice that arrives after its
room's end notice (from another node); the oldest is forgotten first."""

SWEEP_ROOMS = 16
"""Pairs one sweep (people whose cooldown has ended) makes at most."""


def recovery_id(socket: Socket) -> str:
    """The connection state recovery id (``pid``) of a socket here, or '': kept with the
    person's record so that they can be reclaimed after their node is lost."""
    record = getattr(socket, "record", None)
    pid = getattr(record, "pid", "")
    return pid if isinstance(pid, str) else ""


class _LocalRoom:
    """A room with at least one member on this node: the inbox its members' Hangups go
    to (closed when the room ends, which tells them it has)."""

    __slots__ = ("receive", "room_id", "send")

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self.send, self.receive = trio.open_memory_channel[RoomMessage](INBOX_SIZE)


class ClusterMatchmaker(HandoverMixin):
    """One node's matchmaker on shared state. Send it messages through :attr:`mailbox`;
    start :meth:`run`. Implements :class:`~liveloop.shared.SharedState`, and
    :class:`~liveloop.peer.Relocation` (:mod:`.handover`)."""

    confirms = True
    """Connections wait for a change's ``applied`` before acking it: other nodes' changes
    are not ordered by this node's mailbox (docs/events.md, "What an ack means")."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None, *,
                 prefix: str = "ll:") -> None:
        self._settings = settings
        self._metrics = metrics if metrics is not None else Metrics(enabled=False)
        self._prefix = prefix
        self.node_id = secrets.token_urlsafe(9)
        self.mailbox: trio.MemorySendChannel[MatchmakerMessage]
        self.mailbox, self._inbox = trio.open_memory_channel[MatchmakerMessage](MAILBOX_SIZE)
        self._publish, self._to_publish = trio.open_memory_channel[Notice](PUBLISH_QUEUE)
        self._sockets: dict[str, Socket] = {}
        self._queued_at: dict[str, float] = {}  # for the time-to-match metric
        self._rooms: dict[str, _LocalRoom] = {}
        self._ended_rooms: dict[str, None] = {}  # recently ended, oldest first
        self._snapshot = Snapshot()
        self._nursery: trio.Nursery | None = None
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._dirty = False
        self._subscription: trio.CancelScope | None = None
        self._raw = resp.address(settings.redis_url)
        self._publish_stream: trio.SocketStream | None = None
        self.drops = 0
        """How many times this node dropped its clients (tests and diagnostics)."""
        self._init_handover()

    def recovery_store(self) -> ClusterRecoveryStore:
        """The connection state recovery store whose records other nodes can claim."""
        return ClusterRecoveryStore(self._settings, self)

    @property
    def snapshot(self) -> Snapshot:
        """The service's counts as of this node's last heartbeat (the queue-full hint)."""
        return self._snapshot

    @property
    def channel(self) -> str:
        return f"{self._prefix}node:{self.node_id}"

    # -- running ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Connect, register this node, and serve until cancelled. Raises if Redis
        cannot be reached at start."""
        import coredis

        client = coredis.Redis.from_url(self._settings.redis_url, decode_responses=True)
        async with client:
            self._client = client
            for name in scripts.NAMES:
                text = getattr(scripts, name)
                self._scripts[name] = client.register_script(text)
            await self._apply(await self._register())
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._subscriber)
                nursery.start_soon(self._publisher)
                nursery.start_soon(self._heartbeat)
                task_status.started()
                await self._serve_mailbox()

    async def _script(self, name: str, args: Iterable[str | int]) -> Any:
        with trio.fail_after(self._settings.node_timeout):
            return await self._scripts[name](keys=[self._prefix], args=[str(a) for a in args])

    async def _change(self, name: str, args: Iterable[str | int]) -> Any:
        """Run a script that changes shared state. On failure the node is dirty (what it
        did is unknown) and None is returned."""
        try:
            return await self._script(name, args)
        except _redis_errors() as error:
            log.warning("node %s: %s failed (%r); dropping clients", self.node_id, name, error)
            self._dirty = True
            return None

    # -- the actor ----------------------------------------------------------------------

    async def _serve_mailbox(self) -> None:
        """Handle the mailbox in order; what is waiting goes to Redis in one pipelined
        round trip (Redis runs a pipeline's commands in order, one after another)."""
        with self._inbox:
            async for first in self._inbox:
                batch = [first]
                while len(batch) < _BATCH:
                    try:
                        batch.append(self._inbox.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self._handle(batch)

    async def _handle(self, batch: list[MatchmakerMessage]) -> None:
        failed = True  # until known otherwise: an exception or cancellation leaves it unknown
        try:
            failed = not await self._handle_batch(batch)
        finally:
            # Each sender's ack waits for this (docs/events.md, "What an ack means"). On
            # a failure too, which refuses the ack: the node is then dirty and drops its
            # clients.
            for message in batch:
                release(message, failed=failed)

    async def _handle_batch(self, batch: list[MatchmakerMessage]) -> bool:
        """Run the batch's scripts and act on their results; False if Redis failed."""
        now = trio.current_time()
        for message in batch:
            if isinstance(message, Enqueue):
                self._sockets[message.member.sid] = message.member.socket
                self._queued_at.setdefault(message.member.sid, now)
            elif isinstance(message, Withdraw):
                self._queued_at.pop(message.sid, None)
                if message.reason is HangupReason.DISCONNECT:
                    self._sockets.pop(message.sid, None)
        try:
            with trio.fail_after(self._settings.node_timeout):
                async with self._client.pipeline(transaction=False) as pipe:
                    pending = [self._command(message, pipe) for message in batch]
                results = [None if each is None else await each for each in pending]
        except _redis_errors() as error:
            log.warning("node %s: %d changes failed (%r); dropping clients", self.node_id,
                        len(batch), error)
            self._dirty = True
            return False
        found: list[PersonNotice] = []
        for message, result in zip(batch, results, strict=True):
            if result is None:
                continue
            if isinstance(message, Enqueue):
                outcome, result = result
                if outcome == "full":
                    message.member.socket.post(Refused(
                        message.ticket, ErrorCode.QUEUE_FULL,
                        "the queue is full, try again later"))
            found.extend(wire.from_script(result))
        await self._apply(found)
        return True

    def _command(self, message: MatchmakerMessage, pipe: Any) -> Any:
        """The pipelined command for ``message`` (an awaitable result), or None."""
        if isinstance(message, Enqueue):
            member = message.member
            return self._scripts["ENQUEUE"](keys=[self._prefix], client=pipe, args=[
                member.sid, self.node_id, member.name, member.image, str(message.ticket),
                str(self._settings.max_queue), new_room_id(), str(SCAN_LIMIT),
                recovery_id(member.socket)])
        if isinstance(message, Withdraw):
            return self._scripts["LEAVE"](keys=[self._prefix], args=[message.sid, ""],
                                          client=pipe)
        if isinstance(message, Avoid):
            cooldown = self._settings.pair_cooldown
            if message.first != message.second and cooldown > 0:
                a, b = sorted((message.first, message.second))
                pipe.set(f"{self._prefix}c:{a}|{b}", "1", px=math.ceil(cooldown * 1000))
        if isinstance(message, Away):
            return self._scripts["AWAY"](keys=[self._prefix], args=[message.sid], client=pipe)
        if isinstance(message, Returned):
            return self._scripts["RETURN"](keys=[self._prefix], client=pipe, args=[
                message.sid, new_room_id(), str(SCAN_LIMIT)])
        if isinstance(message, Arrived):
            return self._scripts["MOVE"](keys=[self._prefix], client=pipe,
                                         args=[message.sid, self.node_id])
        # RoomClosed: rooms here end by themselves; nothing to forget.
        return None

    # -- notices --------------------------------------------------------------------------

    async def _apply(self, notices: Iterable[PersonNotice]) -> None:
        """Act on each notice: here if the person is ours, else publish it to theirs. A
        room that ends stops taking Hangups here at once. Ours are applied first, with
        no checkpoint between them, so that nothing another node does in answer to a
        published notice can reach a person here before their own part of it."""
        remote: list[PersonNotice] = []
        for notice in notices:
            if isinstance(notice, EndNotice):
                self._ended(notice.room_id)
            if notice.node == self.node_id:
                self._apply_here(notice)
            else:
                remote.append(notice)
        for notice in remote:
            await self._publish.send(notice)

    def _apply_here(self, notice: PersonNotice) -> None:
        if not self._hand(notice):
            self._post_notice(notice)

    def _post_notice(self, notice: PersonNotice) -> None:
        socket = self._sockets.get(notice.sid)
        if socket is None:
            return  # gone from here: its Withdraw has ended (or will end) its room
        if isinstance(notice, DeliverNotice):
            socket.post(Deliver(notice.room_id, notice.event, None, notice.args))
        elif isinstance(notice, EndNotice):
            socket.post(RoomEnded(notice.room_id, requeue=self._settings.requeue_partner))
        elif isinstance(notice, MatchNotice):
            room = self._open_room(notice.room_id)
            partner: Socket | None = None
            if notice.partner_node == self.node_id:
                partner = self._sockets.get(notice.partner)
            if partner is None:
                # On another node, or gone from this one already: then its Withdraw ends
                # the room, and our person must have been matched to be told so.
                partner = RemoteSocket(notice.partner, notice.partner_node, self._publish)
            if room is None:
                return
            socket.post(Matched(notice.ticket, notice.room_id, room.send,
                                partner=Member(notice.partner, notice.partner_name,
                                               notice.partner_image, partner),
                                initiator=notice.initiator))
            if notice.room_id in self._ended_rooms:
                # Its end came first (two nodes' notices are not ordered with each other,
                # e.g. a sweep's match and the partner's node's end): tell the end too,
                # after the match, as it happened, and let the room go.
                self._close_room(notice.room_id)
                socket.post(RoomEnded(notice.room_id,
                                      requeue=self._settings.requeue_partner))
                return
            since = self._queued_at.pop(notice.sid, None)
            if since is not None:
                self._metrics.matched(trio.current_time() - since)

    def _open_room(self, room_id: str) -> _LocalRoom | None:
        room = self._rooms.get(room_id)
        if room is None and self._nursery is not None:
            room = self._rooms[room_id] = _LocalRoom(room_id)
            self._nursery.start_soon(self._run_room, room)
        return room

    def _ended(self, room_id: str) -> None:
        """``room_id`` has ended: close it here, and remember it for a while."""
        self._close_room(room_id)
        self._ended_rooms[room_id] = None
        if len(self._ended_rooms) > ENDED_REMEMBERED:
            del self._ended_rooms[next(iter(self._ended_rooms))]

    def _close_room(self, room_id: str, *, failed: bool = False) -> None:
        room = self._rooms.pop(room_id, None)
        if room is not None:
            # A Hangup still waiting here finds its room ended already: its sender's
            # ack may go (the room is gone in Redis), refused if ``failed`` (Redis could
            # not be reached for the room: the node drops its clients).
            while True:
                try:
                    release(room.receive.receive_nowait(), failed=failed)
                except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                    break
            room.receive.close()  # senders now fail at once; the room's task ends

    async def _run_room(self, room: _LocalRoom) -> None:
        """Wait for a member's Hangup, then leave the room in Redis (if it is still that
        member's room there) and tell the partner."""
        try:
            message: Hangup = await room.receive.receive()
        except (trio.ClosedResourceError, trio.EndOfChannel):
            return
        failed = True  # until the script has answered (see _handle)
        try:
            result = await self._change("LEAVE", (message.sender, room.room_id))
            failed = result is None
            if result is not None:
                await self._apply(wire.from_script(result))
        finally:
            release(message, failed=failed)
            self._close_room(room.room_id, failed=failed)

    # -- tasks ----------------------------------------------------------------------------

    async def _publisher(self) -> None:
        """Publish notices for other nodes, what is waiting in one pipelined write. A
        notice that cannot be published (Redis away) is lost: the node is then dirty,
        and its clients are dropped."""
        failures: tuple[type[Exception], ...] = (
            *_redis_errors(), trio.BrokenResourceError, trio.ClosedResourceError)
        async with self._to_publish:
            async for first in self._to_publish:
                batch = [first]
                while len(batch) < PUBLISH_BATCH:
                    try:
                        batch.append(self._to_publish.receive_nowait())
                    except trio.WouldBlock:
                        break
                try:
                    with trio.fail_after(self._settings.node_timeout):
                        await self._publish_batch(batch)
                except failures as error:
                    log.warning("node %s: %d notices not published (%r)", self.node_id,
                                len(batch), error)
                    self._dirty = True
                    await self._close_publish_stream()

    async def _publish_batch(self, batch: list[Notice]) -> None:
        if self._raw is None:  # TLS or a Unix socket: coredis publishes
            async with self._client.pipeline(transaction=False) as pipe:
                for notice in batch:
                    pipe.publish(self._node_channel(notice.node), wire.encode(notice))
            return
        if self._publish_stream is None:
            host, port, hello = self._raw
            stream = await trio.open_tcp_stream(host, port)
            assert self._nursery is not None
            self._nursery.start_soon(self._read_replies, stream)
            if hello:
                await stream.send_all(hello)
            self._publish_stream = stream
        await self._publish_stream.send_all(b"".join(
            resp.command("PUBLISH", self._node_channel(notice.node), wire.encode(notice))
            for notice in batch))

    async def _read_replies(self, stream: trio.SocketStream) -> None:
        """Read the publisher's replies: an error reply or a closed connection makes
        the node dirty (a notice may be lost)."""
        replies = resp.Replies()
        try:
            while data := await stream.receive_some(65536):
                for error in replies.feed(data):
                    log.warning("node %s: publish refused (%s)", self.node_id, error)
                    self._dirty = True
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if self._publish_stream is stream:
            log.warning("node %s: the publishing connection closed", self.node_id)
            self._dirty = True
            self._publish_stream = None

    async def _close_publish_stream(self) -> None:
        stream, self._publish_stream = self._publish_stream, None
        if stream is not None:
            await stream.aclose()

    def _node_channel(self, node: str) -> str:
        return f"{self._prefix}node:{node}"

    async def _subscriber(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
        """Apply what other nodes publish for people here. When the subscription is lost
        (the heartbeat finds nobody subscribed to this node's channel, e.g. after a Redis
        restart) it is made again; what was published meanwhile is lost, and the node
        is then dirty (docs/cluster.md)."""
        import anyio

        ended: tuple[type[Exception], ...] = (anyio.ClosedResourceError, resp.ReplyError,
                                              trio.BrokenResourceError, *_redis_errors())
        started = False

        def subscribed() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            with trio.CancelScope() as self._subscription:
                try:
                    if self._raw is not None:
                        await self._subscribe_raw(self._raw, subscribed)
                    async with self._client.pubsub(channels=[self.channel],
                                                   ignore_subscribe_messages=True) as pubsub:
                        subscribed()
                        async for message in pubsub:
                            if message.get("type") == "message":
                                self._received(message["data"])
                except* ended as error:
                    # coredis 6.9 also says this when cancelled while closing its stream.
                    log.info("node %s: subscription ended (%r)", self.node_id, error)
            if not started:
                raise RuntimeError("could not subscribe to this node's channel")
            await trio.sleep(self._settings.node_timeout / 6)  # then try again

    async def _check_subscription(self) -> None:
        """Make the subscription again if Redis says nobody listens on our channel."""
        counts = await self._client.pubsub_numsub(self.channel)
        if not counts.get(self.channel):
            log.warning("node %s: not subscribed any more; subscribing again", self.node_id)
            self._dirty = True
            if self._subscription is not None:
                self._subscription.cancel()

    async def _subscribe_raw(self, address: tuple[str, int, bytes],
                             subscribed: Callable[[], None]) -> NoReturn:
        """Subscribe on a connection of our own and apply each notice as it is read: one
        task, no hops through coredis's reader and queues (a relay across nodes is one
        of these per message). Calls ``subscribed`` once Redis confirms; raises
        ``ConnectionResetError`` when Redis closes the connection."""
        host, port, hello = address
        pushes = resp.Pushes()
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(hello + resp.command("SUBSCRIBE", self.channel))
            while data := await stream.receive_some(65536):
                for push in pushes.feed(data):
                    if push[0] == b"message":  # as coredis would give it
                        self._received(push[2])
                    elif push[0] == b"subscribe":
                        subscribed()
        raise ConnectionResetError("the subscription's connection closed")

    def _decoded(self, data: Any) -> wire.Notice | None:
        """The notice ``data`` holds; None (logged) for a bad one."""
        try:
            return wire.decode(data)
        except wire.BadNotice as error:
            log.warning("node %s: dropped a bad notice (%s)", self.node_id, error)
            return None

    def _received(self, data: Any) -> None:
        """Apply a notice published to this node's channel."""
        notice = self._decoded(data)
        if notice is None:
            return
        if isinstance(notice, ClaimNotice):
            if self._nursery is not None:
                self._nursery.start_soon(self._serve_claim, notice)
            return
        if isinstance(notice, HandoverNotice):
            self._answered(notice)
            return
        forwarded = isinstance(notice, ForwardedNotice)
        if isinstance(notice, ForwardedNotice):  # (narrows the type, as `forwarded` cannot)
            inner = self._decoded(notice.notice)
            if inner is None or isinstance(inner, ClaimNotice | HandoverNotice
                                           | ForwardedNotice):
                return
            notice = inner
        if isinstance(notice, EndNotice):
            self._ended(notice.room_id)
        if not self._hand(notice, forwarded):
            self._post_notice(notice)

    async def _register(self) -> list[PersonNotice]:
        """(Re)join: clear what this node's id left in Redis, then mark it alive. Returns
        the clearing's notices (rooms it ended) for the caller to apply."""
        for name in self._scripts:  # loaded first, so that pipelines find them
            await self._client.script_load(getattr(scripts, name))
        result = await self._script("HEARTBEAT", (self.node_id, self._liveness_ms(), 1,
                                                  self._window_ms()))
        return wire.from_script(result[1])

    def _window_ms(self) -> int:
        # A lost node's people wait this long for a recovery elsewhere (0: not at all).
        return math.ceil(self._settings.recovery_window * 1000)

    def _liveness_ms(self) -> int:
        # Refreshed every timeout/6, it lasts 2/3 of the timeout: another node sees it
        # gone within timeout * (2/3 + 1/6) of the last refresh.
        return math.ceil(self._settings.node_timeout * 2 / 3 * 1000)

    async def _heartbeat(self) -> None:
        """Every timeout/6: refresh this node's liveness, declare lost the nodes whose
        liveness has expired, pair people whose cooldown ended, refresh the snapshot.
        A node that has not reached Redis for half the timeout drops its clients: its
        liveness key (2/3 of the timeout) is then about to expire, and the others will
        treat its people as gone."""
        timeout = self._settings.node_timeout
        last_ok = trio.current_time()
        while True:
            await trio.sleep(timeout / 6)
            try:
                with trio.fail_after(timeout / 2):
                    await self._beat()
                last_ok = trio.current_time()
            except _redis_errors() as error:
                log.warning("node %s: heartbeat failed (%r)", self.node_id, error)
                if trio.current_time() - last_ok >= timeout / 2:
                    self.drop_clients("cut off from Redis")
                    self._dirty = True

    async def _beat(self) -> None:
        await self._check_subscription()  # may make the node dirty
        if self._dirty:
            # Cleared first: a failure while registering (another client's change, say)
            # makes it dirty again, for the next beat to clear what that failure left.
            self._dirty = False
            await self._rejoin("lost track of the shared state")
            return
        alive, found = await self._script("HEARTBEAT",
                                          (self.node_id, self._liveness_ms(), 0,
                                           self._window_ms()))
        await self._apply(wire.from_script(found))
        if not alive:
            await self._rejoin("declared lost")
        self._release_expired()
        self._beaten.set()
        self._beaten = trio.Event()
        swept = await self._script(
            "SWEEP", (SCAN_LIMIT, *(new_room_id() for _ in range(SWEEP_ROOMS))))
        await self._apply(wire.from_script(swept))
        self._snapshot = await self.current()

    async def _rejoin(self, why: str) -> None:
        """Register afresh, then drop the clients, even if registering fails, then act
        on the clearing's notices. In that order: a client that reconnects at once must
        find none of its old records to be paired with; a change a client makes while the
        node registers must not be wiped by the clearing behind its back (it is dropped
        with the rest, and asks again); and the dropped clients must not first hear that
        their calls ended and act on it (re-queue) from a node about to drop them: the
        notices reach only the partners on other nodes. If registering fails the node is
        dirty, whatever made it rejoin: the next beat registers again. (Applying only
        queues the notices for the publisher, which handles Redis's failures itself.)"""
        try:
            found = await self._register()
        except BaseException:
            self.drop_clients(why)
            self._dirty = True
            raise
        self.drop_clients(why)
        await self._apply(found)

    def drop_clients(self, why: str) -> None:
        """Disconnect everyone queued or placed here: their shared state is gone or
        unknown, and serving them would be a split brain."""
        if self._sockets:
            log.warning("node %s: %s; dropping %d clients", self.node_id, why,
                        len(self._sockets))
        self.drops += 1
        sockets, self._sockets = self._sockets, {}
        self._queued_at.clear()
        for room_id in list(self._rooms):
            self._close_room(room_id, failed=True)
        for socket in sockets.values():
            socket.drop()  # the transport closes: the official client reconnects by itself

    # -- status ---------------------------------------------------------------------------

    async def current(self) -> Snapshot:
        """The whole service's counts, read from Redis now."""
        result = await self._script("STATUS", (self._settings.status_users,))
        return Snapshot(queue_size=int(result[0]), queue_users=tuple(map(str, result[3:])),
                        rooms_active=int(result[1]), rooms_total=int(result[2]))
