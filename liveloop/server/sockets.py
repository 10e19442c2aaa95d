"""Socket.IO v5 on top of an Engine.IO session: namespaces, sockets and acks.

:class:`SocketIOConnection` is the :class:`~liveloop.server.session.SessionApp` of a
Socket.IO session: it runs in the session's task, decodes packets, and calls each
namespace's handler in arrival order. :class:`NamespaceSocket` is what the application
holds for one client on one namespace.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trio

from ..config import Settings
from ..logs import clip
from ..metrics import Metrics
from ..wire import socketio as sio
from ..wire.errors import ProtocolError
from .api import (
    DRAIN,
    JSON,
    ConnectRefused,
    DisconnectReason,
    Namespace,
    SocketClosed,
    SocketHandler,
)
from .recovery import (
    RECOVERABLE,
    Exported,
    History,
    MemoryStore,
    RecoveryRecord,
    RecoveryStore,
    frames_of,
)
from .session import DISCONNECT_GRACE, EngineSession

log = logging.getLogger(__name__)


def new_id() -> str:
    """A random, URL-safe 20-character id (120 bits), for sids and socket ids."""
    return secrets.token_urlsafe(15)


class NamespaceSocket:
    """One client on one namespace; implements :class:`~liveloop.server.api.Socket`.

    With a recovery record (recovery on, and the client did not opt out) the socket
    outlives a lost transport: it is *away* (``present`` false, ``connected`` still
    true), what is emitted goes into the record's history only, and what is posted to it
    is handled by an away task (:class:`Recovery`) until the client comes back on a new
    session (:meth:`Recovery.resume`) or the window passes.
    """

    __slots__ = ("_acks", "_away", "_connected", "_forward", "_held", "_ids", "_namespace",
                 "_prefix", "_recovery", "_session", "_sid", "handler", "record")

    def __init__(self, session: EngineSession, namespace: str) -> None:
        self._session = session
        self._namespace = namespace
        self._sid = new_id()
        self._connected = False
        self._acks: dict[int, trio.MemorySendChannel[list[JSON]]] = {}
        self._ids = itertools.count()
        self._prefix = "42" if namespace == "/" else f"42{namespace},"
        # While the namespace's connect() runs, emits wait here: the client must see
        # CONNECT before anything else of this namespace.
        self._held: list[list[str | bytes]] | None = []
        self.handler: SocketHandler | None = None
        self.record: RecoveryRecord | None = None
        """Set when this socket can be recovered (see :mod:`.recovery`)."""
        self._recovery: Recovery | None = None
        self._away: _Away | None = None
        # Set once the socket has moved to another node (Recovery.export): whatever is
        # still posted here (a partner's relay on its way) goes after it.
        self._forward: Callable[[object], None] | None = None

    @property
    def sid(self) -> str:
        return self._sid

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def connected(self) -> bool:
        if self.record is None:
            return self._connected and not self._session.closed
        return self._connected  # a recoverable socket lives on while its client is away

    @property
    def present(self) -> bool:
        return self._connected and self._away is None and not self._session.closed

    def emit(self, event: str, *args: JSON) -> None:
        if not self._connected:
            return
        record = self.record
        if record is None:
            if not self._session.closed:
                self._send(sio.encode_event(self._namespace, event, args))
            return
        history = record.history
        self._emit_kept(history, sio.encode_event(self._namespace, event,
                                                  (*args, history.stamp())))

    def emit_json(self, data: str) -> None:
        # ``data`` is what encode_event puts after the packet's head: the packet is
        # made without decoding it, and with a record its offset goes in as the last
        # argument (``[..., "7"]``), as emit would have written it.
        if not self._connected:
            return
        head = self._prefix[1:]
        record = self.record
        if record is None:
            if not self._session.closed:
                self._send([head + data])
            return
        history = record.history
        self._emit_kept(history, [f'{head}{data[:-1]},"{history.stamp()}"]'])

    def _emit_kept(self, history: History, parts: list[str | bytes]) -> None:
        """Keep a packet just stamped in ``history``, and send it."""
        if len(parts) == 1 and self._held is None and self._away is None:
            # The hot path: one text frame, built once, kept and sent as it is.
            frame = "4" + parts[0]  # type: ignore[operator]
            history.keep(frame)
            self._session.send_frame(frame)  # nothing once the session is closed
            return
        self._keep(history.keep(frames_of(parts)), parts)

    def _keep(self, within_bounds: bool, parts: list[str | bytes]) -> None:
        """Send a packet the history has kept, unless the client is away; give the
        recovery up when the history overflows while it is."""
        away = self._away
        if away is None:
            if not self._session.closed:
                self._send(parts)
        elif not within_bounds:
            away.give_up(DisconnectReason.RECOVERY_OVERFLOW)

    def post(self, message: object) -> None:
        away = self._away
        if away is not None:
            away.post(message)
        elif not self._connected:
            if self._forward is not None:
                self._forward(message)
        elif not self._session.closed:
            self._session.post(_ForSocket(self, message))
        elif self._recovery is not None:
            # The transport is lost and the session task has not let go of us yet: the
            # away task takes the message once it has.
            away = self._recovery.go_away(self)
            if away is not None:
                away.post(message)

    async def call(self, event: str, *args: JSON) -> list[JSON]:
        if not self.present:
            raise SocketClosed
        ack_id = next(self._ids)
        send, receive = trio.open_memory_channel[list[JSON]](1)
        self._acks[ack_id] = send
        try:
            self._send(sio.encode(sio.Packet(sio.PacketType.EVENT, self._namespace,
                                             [event, *args], ack_id)))
            try:
                return await receive.receive()
            except trio.EndOfChannel:
                raise SocketClosed from None
        finally:
            self._acks.pop(ack_id, None)

    def disconnect(self) -> None:
        if self.present:
            self._send(sio.encode(sio.Packet(sio.PacketType.DISCONNECT, self._namespace)))
            self._session.post(_ServerDisconnect(self))
        elif self._away is not None:
            self._away.give_up(DisconnectReason.SERVER_NAMESPACE)

    def drop(self) -> None:
        if self._away is not None:  # nothing to close: the person is gone now
            self._away.give_up(DisconnectReason.SERVER_SHUTDOWN)
        else:
            self._session.close(DisconnectReason.SERVER_SHUTDOWN)

    # -- used by SocketIOConnection, in the session task ---------------------------

    def _send(self, parts: list[str | bytes]) -> None:
        if self._held is not None:
            self._held.append(parts)
        elif len(parts) == 1:
            self._session.send_frame("4" + parts[0])  # type: ignore[operator]
        else:
            self._session.send_packets(
                ["4" + p if isinstance(p, str) else p for p in parts]
            )

    def _resolve_ack(self, ack_id: int, args: list[JSON]) -> None:
        channel = self._acks.pop(ack_id, None)
        if channel is not None:
            channel.send_nowait(args)

    def _release(self) -> None:
        held, self._held = self._held, None
        for parts in held or ():
            self._send(parts)

    def _fail_acks(self) -> None:
        for channel in self._acks.values():
            channel.close()
        self._acks.clear()

    def _close(self) -> None:
        self._connected = False
        self._held = None
        self._fail_acks()
        if self._recovery is not None and self.record is not None:
            self._recovery.store.forget(self.record.pid)


class _ForSocket:
    __slots__ = ("message", "socket")

    def __init__(self, socket: NamespaceSocket, message: object) -> None:
        self.socket = socket
        self.message = message


class _ServerDisconnect:
    __slots__ = ("socket",)

    def __init__(self, socket: NamespaceSocket) -> None:
        self.socket = socket


class _Ack:
    """The ack of one client event; sending twice sends once."""

    __slots__ = ("_id", "_socket")

    def __init__(self, socket: NamespaceSocket, ack_id: int) -> None:
        self._socket: NamespaceSocket | None = socket
        self._id = ack_id

    def __call__(self, *args: JSON) -> None:
        socket, self._socket = self._socket, None
        if socket is not None and socket.connected:
            socket._send(sio.encode_ack(socket.namespace, args, self._id))


class _Claim:
    """The last message an away task takes: a new session owns the socket now."""


class _GiveUp:
    """Wakes an away task whose recovery was given up."""


_CLAIM = _Claim()
_GIVE_UP = _GiveUp()


class _Away:
    """A socket's time away: the posts for it, and how its away task hands it on.

    The mailbox holds ``mailbox_size`` posts plus one slot each for the claim and the
    give-up wake-up. A post beyond that gives the recovery up (the person is treated as
    gone), as a full session mailbox would close a present one.
    """

    __slots__ = ("claimed", "first", "gone", "handed", "limit", "posted", "receive",
                 "released", "send")

    def __init__(self, limit: int) -> None:
        self.send, self.receive = trio.open_memory_channel[object](limit + 2)
        self.limit = limit
        self.posted = 0
        self.released = trio.Event()
        """The session task that served the socket has let go of its handler."""
        self.handed = trio.Event()
        """The away task has let go of the handler (claimed, or gone)."""
        self.claimed = False
        self.gone: str | None = None
        """Why the recovery was given up, once it is."""
        self.first: list[object] = []
        """Posts the session never handled, handled before anything in the mailbox."""

    def post(self, message: object) -> None:
        """Queue a post for the away task; after the claim, for the claimant (which
        moves what follows the claim to its session's mailbox, in order)."""
        if self.gone is not None:
            return
        if self.posted >= self.limit:
            self.give_up(DisconnectReason.MAILBOX_OVERFLOW)
            return
        self.posted += 1
        self.send.send_nowait(message)

    def late(self) -> list[object]:
        """What was posted after the claim, in order (for the new owner)."""
        posts: list[object] = []
        while True:
            try:
                late = self.receive.receive_nowait()
            except trio.WouldBlock:
                return posts
            if late is not _GIVE_UP:
                posts.append(late)

    def give_up(self, reason: str) -> None:
        if self.gone is None and not self.claimed:
            self.gone = reason
            self.send.send_nowait(_GIVE_UP)


class Recovery:
    """Connection state recovery for one Socket.IO server: the record store, and the
    nursery where away sockets wait for their clients (:meth:`run` is an actor).

    An away socket's task owns its handler while the client is away: it handles what is
    posted to the socket (what the handler emits goes into the history), and when the
    window passes or the recovery is given up it ends the socket as a disconnect would.
    A returning client's session claims the socket (:meth:`resume`); the away task
    handles what was posted before the claim, then hands the handler over.
    """

    def __init__(self, settings: Settings, store: RecoveryStore | None = None,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.window = settings.recovery_window
        self.store: RecoveryStore = MemoryStore(settings) if store is None else store
        self.store.serve(self.export)
        self._metrics = metrics if metrics is not None else Metrics(enabled=False)
        self._nursery: trio.Nursery | None = None

    @property
    def enabled(self) -> bool:
        return self.window > 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Hold the away sockets' nursery until cancelled; on cancel each away socket
        ends (its handler's ``on_disconnect`` runs, shielded)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None  # sessions closing now end their sockets at once

    def adopt(self, socket: NamespaceSocket, auth: dict[str, Any]) -> None:
        """Make ``socket`` recoverable unless recovery is off or the client opted out
        (auth ``{"recovery": false}``)."""
        if self.enabled and self._nursery is not None and auth.get("recovery") is not False:
            socket.record = self.store.create(socket.sid, socket.namespace)
            socket.record.state = socket
            socket._recovery = self

    def go_away(self, socket: NamespaceSocket) -> _Away | None:
        """The socket's transport is lost: from now on posts wait for its away task.
        Idempotent, and synchronous so that nothing posted meanwhile is lost. None when
        the server is shutting down (nothing waits any more)."""
        away = socket._away
        if away is None:
            if self._nursery is None or socket.record is None:
                return None
            away = socket._away = _Away(self.settings.mailbox_size)
            self._metrics.away.inc()
            socket.record.history.mark_away()
            socket._fail_acks()
            self._nursery.start_soon(self._wait_away, socket, away,
                                     socket._session.close_reason or "transport close")
        return away

    async def _wait_away(self, socket: NamespaceSocket, away: _Away, reason: str) -> None:
        """Own the handler while the client is away (see the class docstring)."""
        handler = socket.handler
        ends_here = True  # unless the handler is handed on, or ended by its session
        try:
            await away.released.wait()
            if away.gone is not None:
                ends_here = False  # its session task ended the socket
                return
            deadline = trio.current_time() + self.window
            on_away = getattr(handler, "on_away", None)
            if on_away is not None:
                await on_away()
            for unhandled in away.first:
                if handler is not None and away.gone is None:
                    await handler.on_message(unhandled)
            away.first.clear()
            while away.gone is None:
                message: object = None
                if away.claimed:
                    message = await away.receive.receive()
                else:
                    with trio.move_on_at(deadline):
                        message = await away.receive.receive()
                    if message is None:
                        away.gone = reason  # the window has passed
                        continue
                if message is _CLAIM:
                    ends_here = False
                    return
                if message is not _GIVE_UP:
                    away.posted -= 1
                    if handler is not None:
                        await handler.on_message(message)
        finally:
            self._metrics.away.dec()
            if ends_here:
                # Expired, given up, or cancelled (the server is shutting down).
                await self._end(socket, away, handler,
                                away.gone or DisconnectReason.SERVER_SHUTDOWN)
            away.handed.set()

    async def _end(self, socket: NamespaceSocket, away: _Away,
                   handler: SocketHandler | None, reason: str) -> None:
        """End away ``socket`` for good, as a failed recovery: closed, its record
        forgotten, and its handler told ``reason`` (shielded: also when cancelled, for at
        most ``DISCONNECT_GRACE``)."""
        away.gone = reason
        socket._close()
        self._metrics.recoveries.labels("failed").inc()
        if handler is not None:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + DISCONNECT_GRACE
                await handler.on_disconnect(reason)

    async def resume(self, auth: dict[str, Any], namespace: str, session: EngineSession
                     ) -> NamespaceSocket | None:
        """The socket of ``auth``'s ``pid``, taken over by ``session``, or None (unknown
        or expired ``pid``: the caller connects a new socket). An older connection still
        open with this ``pid`` is closed first."""
        pid = auth.get("pid")
        socket = self._held(pid, namespace) if isinstance(pid, str) else None
        if socket is None or socket._session is session:
            return None
        away = await self._claim(socket)
        if away is None:
            return None
        socket._away = None
        socket._session = session
        socket._held = []
        # Posted after the claim, before this handover: theirs is the new session's
        # mailbox now, ahead of anything posted from here on.
        for late in away.late():
            session.post(_ForSocket(socket, late))
        assert socket.record is not None
        socket.record.history.mark_back()
        self._metrics.recoveries.labels("succeeded").inc()
        return socket

    def _held(self, pid: str, namespace: str) -> NamespaceSocket | None:
        """The live socket of ``pid`` on ``namespace`` held here, if any."""
        record = self.store.get(pid)
        socket = record.state if record is not None else None
        if not isinstance(socket, NamespaceSocket) or socket.namespace != namespace \
                or not socket._connected:
            return None
        return socket

    async def _claim(self, socket: NamespaceSocket) -> _Away | None:
        """Claim ``socket`` for a new owner: its away task (or, if the old connection
        is still open, the one made by closing it) hands the handler over. None if it
        cannot be claimed (already claimed, given up, or the hand-over did not come)."""
        away = socket._away
        if away is None:
            # Half-open: the old transport has not been noticed as lost yet. Close it, so
            # that it can never deliver to or take from this socket again.
            socket._session.close(DisconnectReason.TRANSPORT_CLOSE)
            away = self.go_away(socket)
        if away is None or away.claimed or away.gone is not None:
            return None
        away.claimed = True
        away.send.send_nowait(_CLAIM)
        with trio.move_on_after(DISCONNECT_GRACE):
            await away.handed.wait()
        if away.gone is not None or not away.handed.is_set():
            return None
        return away

    async def export(self, pid: str, namespace: str,
                     hand_over: Callable[[Exported], Callable[[object], None] | None]
                     ) -> bool:
        """Another node claims ``pid``'s socket (see :data:`.recovery.Exporter`): claim
        it here as a reconnect would, give its state to ``hand_over``, and from then on
        forward what is posted to the old socket (in order: what was posted during the
        claim goes first). Nothing here owns the socket afterwards."""
        socket = self._held(pid, namespace)
        away = await self._claim(socket) if socket is not None else None
        if socket is None or socket.record is None or away is None:
            return False
        handler = socket.handler
        export_state = getattr(handler, "export_state", None)
        seq, entries = socket.record.history.export()
        exported = Exported(pid, socket.sid, namespace, seq, tuple(entries),
                            export_state() if export_state is not None else None)
        forward = hand_over(exported)
        socket._away = None
        if forward is None:  # it could not be sent: the person is gone here
            await self._end(socket, away, handler, DisconnectReason.TRANSPORT_CLOSE)
            return False
        socket._close()  # forgets the record: the other node holds it now
        socket._forward = forward
        for late in away.late():
            forward(late)
        return True

    async def restore(self, exported: Exported, namespace: Namespace,
                      session: EngineSession) -> NamespaceSocket | None:
        """The socket another node handed over (:meth:`export`), attached to ``session``
        with its emits held, as :meth:`resume` leaves a local one. None if the
        namespace cannot restore a handler."""
        restore = getattr(namespace, "restore", None)
        if restore is None:
            return None
        socket = NamespaceSocket(session, exported.namespace)
        socket._sid = exported.sid
        record = RecoveryRecord(exported.pid, exported.sid, exported.namespace, self.settings)
        record.history.restore(exported.seq, exported.entries)
        record.state = socket
        socket.record = record
        socket._recovery = self
        self.store.put(record)
        socket._connected = True
        socket.handler = await restore(socket, exported.state)
        self._metrics.recoveries.labels("succeeded").inc()
        return socket


class SocketIOConnection:
    """The Socket.IO layer of one Engine.IO session; runs only in the session's task."""

    def __init__(self, settings: Settings, namespaces: Mapping[str, Namespace],
                 recovery: Recovery | None = None) -> None:
        self._settings = settings
        self._namespaces = namespaces
        self._recovery = recovery
        self._decoder = sio.Decoder(max_attachments=settings.max_attachments)
        self._sockets: dict[str, NamespaceSocket] = {}
        self._session: EngineSession | None = None
        self._draining = False

    @property
    def session(self) -> EngineSession:
        assert self._session is not None
        return self._session

    async def on_open(self, session: EngineSession) -> None:
        self._session = session
        # connectTimeout: a session that joins no namespace in time is closed.
        session.set_deadline(trio.current_time() + self._settings.connect_timeout,
                             "connect timeout")

    async def on_messages(self, batch: Sequence[str | bytes]) -> None:
        """Decode the whole batch first: if any of it is invalid the connection closes
        and none of it is handled, so a request that came with a bad packet is never
        served after the close it causes."""
        decoder = self._decoder
        packets: list[sio.Packet] = []
        try:
            for data in batch:
                packet = (decoder.feed_text(data) if isinstance(data, str)
                          else decoder.feed_binary(data))
                if packet is not None:
                    packets.append(packet)
        except ProtocolError as exc:
            log.info("protocol error; closing", extra={
                "sid": self.session.sid, "reason": DisconnectReason.PARSE_ERROR,
                "detail": clip(exc.reason)})
            self.session.close(DisconnectReason.PARSE_ERROR)
            return
        session = self.session
        for packet in packets:
            await self._handle(packet)
            if session.closed:
                return

    async def _handle(self, packet: sio.Packet) -> None:
        kind = packet.type
        socket = self._sockets.get(packet.namespace)
        if kind is sio.PacketType.EVENT or kind is sio.PacketType.BINARY_EVENT:
            if socket is None or socket.handler is None:
                return  # the client believes it is connected; socket.io ignores these
            args = packet.data
            ack = _Ack(socket, packet.id) if packet.id is not None else None
            await socket.handler.on_event(args[0], args[1:], ack)
        elif kind is sio.PacketType.ACK or kind is sio.PacketType.BINARY_ACK:
            if socket is not None and packet.id is not None:
                socket._resolve_ack(packet.id, packet.data)
        elif kind is sio.PacketType.CONNECT:
            await self._connect(packet)
        elif kind is sio.PacketType.DISCONNECT:
            if socket is not None:
                await self._drop(socket, DisconnectReason.CLIENT_NAMESPACE)
        else:  # a client never sends CONNECT_ERROR
            self.session.close(DisconnectReason.PARSE_ERROR)

    async def _connect(self, packet: sio.Packet) -> None:
        name = packet.namespace
        namespace = self._namespaces.get(name)
        session = self.session
        if namespace is None:
            session.send_frame("4" + sio.encode_control(sio.Packet(
                sio.PacketType.CONNECT_ERROR, name, {"message": "Invalid namespace"})))
            return
        if name in self._sockets:
            # A second CONNECT on a live namespace is a client bug: refuse it, keep the first.
            session.send_frame("4" + sio.encode_control(sio.Packet(
                sio.PacketType.CONNECT_ERROR, name, {"message": "Already connected"})))
            return
        auth = packet.data if packet.data is not sio.ABSENT else {}
        recovery = self._recovery
        wanted: dict[str, Any] = {}
        if recovery is not None and isinstance(auth, dict):
            # Recovery's own keys never reach the application.
            auth = dict(auth)
            wanted = {key: auth.pop(key) for key in ("pid", "offset", "recovery")
                      if key in auth}
            if (recovery.enabled and wanted.get("recovery") is not False
                    and await self._recover(recovery, wanted, name)):
                return
        socket = NamespaceSocket(session, name)
        if recovery is not None:
            recovery.adopt(socket, wanted)
        try:
            socket._connected = True
            handler = await namespace.connect(socket, auth)
        except ConnectRefused as refused:
            socket._close()
            data: Any = refused.data
            if not isinstance(data, dict):
                data = {"message": str(data)}
            session.send_frame("4" + sio.encode_control(sio.Packet(
                sio.PacketType.CONNECT_ERROR, name, data)))
            return
        socket.handler = handler
        self._sockets[name] = socket
        self._answer_connect(socket)
        if self._draining:  # it joined late: it is told too
            await handler.on_message(DRAIN)

    def _answer_connect(self, socket: NamespaceSocket) -> None:
        session = self.session
        session.set_deadline(math.inf, "")
        answer: dict[str, str] = {"sid": socket.sid}
        if socket.record is not None:
            answer["pid"] = socket.record.pid
        session.send_frame("4" + sio.encode_control(sio.Packet(
            sio.PacketType.CONNECT, socket.namespace, answer)))
        socket._release()

    async def _recover(self, recovery: Recovery, wanted: dict[str, Any], name: str) -> bool:
        """Take over the socket of ``wanted["pid"]`` if there is one: replay what the
        client missed, then answer CONNECT (so the client reports ``recovered``)."""
        pid = wanted.get("pid")
        if not isinstance(pid, str):
            return False
        socket = await recovery.resume(wanted, name, self.session)
        if socket is None and recovery.store.get(pid) is None \
                and hasattr(self._namespaces[name], "restore"):
            # Not held here: another node (or worker) may hold it.
            exported = await recovery.store.claim_elsewhere(pid, name)
            if exported is not None:
                socket = await recovery.restore(exported, self._namespaces[name],
                                                self.session)
        if socket is None:
            return False
        self._sockets[name] = socket
        if self.session.closed:
            # The client left again while the record was on its way (from another node,
            # that takes round trips): it is away again, not lost.
            await self._drop(socket, self.session.close_reason or
                             DisconnectReason.TRANSPORT_CLOSE)
            return True
        assert socket.record is not None and socket.handler is not None
        frames, complete = socket.record.history.after(wanted.get("offset"))
        if not complete:
            log.info("session %s: socket %s recovered, older events lost",
                     self.session.sid, socket.sid)
        if frames:
            self.session.send_packets(frames)
        await socket.handler.on_recover()
        self._answer_connect(socket)
        if self._draining:  # back while the server drains: told as the others were
            await socket.handler.on_message(DRAIN)
        return True

    async def _drop(self, socket: NamespaceSocket, reason: str, *, shield: bool = True
                    ) -> None:
        """End one namespace socket and call its ``on_disconnect``, once. It must run to
        its end (it tells the matchmaker or the partner), even if the session closes
        meanwhile: ``shield`` it, unless the caller already does (``on_close``)."""
        if self._sockets.get(socket.namespace) is not socket:
            return
        del self._sockets[socket.namespace]
        recovery = socket._recovery
        if recovery is not None and socket.record is not None:
            if reason in RECOVERABLE and socket._connected:
                # Its client may come back: the away task takes the handler from here.
                away = recovery.go_away(socket)
                if away is not None:
                    # What was posted to it and not handled yet goes first.
                    away.first = [item.message for item in self.session.leftover
                                  if isinstance(item, _ForSocket) and item.socket is socket]
                    away.released.set()
                    return
            away = socket._away
            if away is not None:  # posts made it go away, but it is not recoverable
                away.gone = reason
                away.released.set()
        socket._close()
        if socket.handler is None:
            return
        with trio.CancelScope(shield=shield) as scope:
            if shield:
                scope.deadline = trio.current_time() + DISCONNECT_GRACE
            await socket.handler.on_disconnect(reason)
        if scope.cancelled_caught:
            log.error("on_disconnect did not finish in time",
                      extra={"sid": self.session.sid, "socket": socket.sid})

    async def on_post(self, message: object) -> None:
        if isinstance(message, _ForSocket):
            socket = message.socket
            if socket.connected and socket.handler is not None:
                await socket.handler.on_message(message.message)
        elif isinstance(message, _ServerDisconnect):
            await self._drop(message.socket, DisconnectReason.SERVER_NAMESPACE)
        elif message is DRAIN:
            await self._drain()

    async def _drain(self) -> None:
        """The server drains: a connection on no namespace yet is closed; otherwise
        each namespace's handler is told, and decides."""
        self._draining = True
        if not self._sockets:
            self.session.close(DisconnectReason.SERVER_SHUTDOWN)
            return
        for socket in list(self._sockets.values()):
            if socket.connected and socket.handler is not None:
                await socket.handler.on_message(DRAIN)

    async def on_close(self, reason: str) -> None:
        for socket in list(self._sockets.values()):
            await self._drop(socket, reason, shield=False)  # the session shields this
