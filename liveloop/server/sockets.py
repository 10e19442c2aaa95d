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
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from ..config import Settings
from ..logs import clip
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
from .session import DISCONNECT_GRACE, EngineSession

log = logging.getLogger(__name__)


def new_id() -> str:
    """A random, URL-safe 20-character id (120 bits), for sids and socket ids."""
    return secrets.token_urlsafe(15)


class NamespaceSocket:
    """One client on one namespace; implements :class:`~liveloop.server.api.Socket`."""

    __slots__ = ("_acks", "_connected", "_held", "_ids", "_namespace", "_prefix", "_session",
                 "_sid", "handler")

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

    @property
    def sid(self) -> str:
        return self._sid

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def connected(self) -> bool:
        return self._connected and not self._session.closed

    def emit(self, event: str, *args: JSON) -> None:
        if not self.connected:
            return
        self._send(sio.encode_event(self._namespace, event, args))

    def emit_text(self, json_array: str) -> None:
        """Emit an EVENT whose JSON array (``["event", ...]``) is already encoded.

        The hot path's shortcut: no bytes may be inside it.
        """
        if self._held is None and self.connected:
            self._session.send_frame(self._prefix + json_array)
        elif self.connected:
            self._send([self._prefix[1:] + json_array])

    def post(self, message: object) -> None:
        if self.connected:
            self._session.post(_ForSocket(self, message))

    async def call(self, event: str, *args: JSON) -> list[JSON]:
        if not self.connected:
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
        if self.connected:
            self._send(sio.encode(sio.Packet(sio.PacketType.DISCONNECT, self._namespace)))
            self._session.post(_ServerDisconnect(self))

    def drop(self) -> None:
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

    def _close(self) -> None:
        self._connected = False
        self._held = None
        for channel in self._acks.values():
            channel.close()
        self._acks.clear()


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


class SocketIOConnection:
    """The Socket.IO layer of one Engine.IO session; runs only in the session's task."""

    def __init__(self, settings: Settings, namespaces: Mapping[str, Namespace]) -> None:
        self._settings = settings
        self._namespaces = namespaces
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
        socket = NamespaceSocket(session, name)
        auth = packet.data if packet.data is not sio.ABSENT else {}
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
        session.set_deadline(math.inf, "")
        session.send_frame("4" + sio.encode_control(sio.Packet(
            sio.PacketType.CONNECT, name, {"sid": socket.sid})))
        socket._release()
        if self._draining:  # it joined late: it is told too
            await handler.on_message(DRAIN)

    async def _drop(self, socket: NamespaceSocket, reason: str, *, shield: bool = True
                    ) -> None:
        """End one namespace socket and call its ``on_disconnect``, once. It must run to
        its end (it tells the matchmaker or the partner), even if the session closes
        meanwhile: ``shield`` it, unless the caller already does (``on_close``)."""
        if self._sockets.get(socket.namespace) is not socket:
            return
        del self._sockets[socket.namespace]
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
