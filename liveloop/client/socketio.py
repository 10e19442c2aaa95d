"""A Socket.IO v5 client on trio-websocket (WebSocket transport only).

It connects straight to ``<path>?EIO=4&transport=websocket``, waits for the Engine.IO
OPEN packet, sends CONNECT (with an optional auth payload) and waits for the server's
CONNECT or CONNECT_ERROR. From then on one reader task, owned by :func:`open_socketio`,
answers the server's pings with pongs, resolves acks, and puts every event of the
namespace into a bounded Trio memory channel.

Framing goes through the sans-IO codec in :mod:`liveloop.wire`; nothing here parses or
builds Socket.IO text by hand except the two one-character Engine.IO prefixes.

Backpressure: when the event channel is full, the reader waits for the consumer. While
it waits it reads nothing, so it also answers no ping: a consumer that stops reading for
longer than the server's ``pingInterval + pingTimeout`` gets disconnected by the server.
That is deliberate (bounded memory, and a stuck client is a dead client).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url
from wsproto.utilities import LocalProtocolError

from ..wire import socketio as sio
from ..wire.errors import ProtocolError

__all__ = [
    "ConnectRefused",
    "Disconnected",
    "Event",
    "RecoveryState",
    "SocketIOClient",
    "open_socketio",
    "websocket_url",
]

_EVENT = sio.PacketType.EVENT
_BINARY_EVENT = sio.PacketType.BINARY_EVENT
_ACK = sio.PacketType.ACK
_BINARY_ACK = sio.PacketType.BINARY_ACK
_MAX_REPLAYED = 4096
"""Replayed events held during a recovering handshake, at most (the server sends no more
than its ``recovery_packets``)."""


class ConnectRefused(Exception):
    """The server answered CONNECT with CONNECT_ERROR; ``data`` is what it sent."""

    def __init__(self, data: Any) -> None:
        super().__init__(f"connection refused by the server: {data!r}")
        self.data = data


class Disconnected(Exception):
    """The connection is closed; ``reason`` says why (as socket.io-client names it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Event(NamedTuple):
    """One event from the server: its name, its arguments, and its ack id if it wants one
    (answer it with :meth:`SocketIOClient.ack`)."""

    name: str
    args: list[Any]
    ack_id: int | None = None


class RecoveryState:
    """What a client needs to recover its session after a lost connection, as the
    official ``socket.io-client`` keeps it: the private session id (``pid``) from the
    server's CONNECT answer, and the offset of the last event received.

    Give the same object to the next :func:`open_socketio` and the server replays what
    was missed (before the CONNECT answer) and keeps the socket id;
    :attr:`SocketIOClient.recovered` then says it worked. ``pid`` stays None with a
    server that does not recover (or when the client opted out)."""

    __slots__ = ("offset", "pid")

    def __init__(self) -> None:
        self.pid: str | None = None
        self.offset: str | None = None

    def auth(self, auth: Mapping[str, Any] | None) -> Any:
        """The CONNECT auth: ``auth`` plus ``pid`` and ``offset`` when there is a
        session to recover (the server removes them before its application sees it)."""
        if self.pid is None:
            return sio.ABSENT if auth is None else dict(auth)
        recover: dict[str, Any] = {"pid": self.pid}
        if self.offset is not None:
            recover["offset"] = self.offset
        return {**recover, **(auth or {})}


class _Waiter:
    """An emit-with-ack in flight."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: list[Any] | None = None


def websocket_url(url: str, path: str = "/socket.io/") -> str:
    """The Engine.IO WebSocket URL for a server URL.

    ``http://h:p`` becomes ``ws://h:p/socket.io/?EIO=4&transport=websocket`` (``https``
    becomes ``wss``). A URL that already has a path other than ``/`` keeps it; its query,
    if any, is kept before the Engine.IO parameters.
    """
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"not an http(s) or ws(s) URL: {url!r}")
    endpoint = parts.path if parts.path not in ("", "/") else path
    if not endpoint.endswith("/"):
        endpoint += "/"
    query = "EIO=4&transport=websocket"
    if parts.query:
        query = f"{parts.query}&{query}"
    return urlunsplit((scheme, parts.netloc, endpoint, query, ""))


class SocketIOClient:
    """One Socket.IO connection to one namespace. Get one from :func:`open_socketio`.

    Every method may be called from any task of the owning Trio run. Sends are
    delivered in the order their calls reached the WebSocket; a multi-frame (binary)
    packet is never interleaved with another packet.
    """

    def __init__(self, ws: WebSocketConnection, namespace: str, max_events: int,
                 recovery: RecoveryState | None = None) -> None:
        self._ws = ws
        self.recovery = RecoveryState() if recovery is None else recovery
        """The session to recover next time (pass it to the next :func:`open_socketio`)."""
        self.recovered = False
        """Whether the server recovered this client's earlier session on connect."""
        self._replayed: list[Event] = []
        self._namespace = namespace
        self._decoder = sio.Decoder()
        self._events_send, self._events_receive = trio.open_memory_channel[Event](max_events)
        self._acks: dict[int, _Waiter] = {}
        self._ack_ids = itertools.count()
        self._send_lock = trio.StrictFIFOLock()
        self._closed_reason: str | None = None
        self._sid: str | None = None
        self.engine_sid = ""
        """The Engine.IO session id (from OPEN)."""
        self.ping_interval = 25.0
        """Seconds between the server's pings (from OPEN)."""
        self.ping_timeout = 20.0
        """Seconds the server waits for a pong (from OPEN)."""
        self.max_payload = 1_000_000
        """The largest packet the server takes, bytes (from OPEN)."""
        self._last_ping = 0.0
        self.pings = 0
        """How many of the server's pings this client has answered."""

    # -- state ---------------------------------------------------------------------

    @property
    def sid(self) -> str:
        """The socket id the server gave this connection on the namespace."""
        assert self._sid is not None, "not connected"
        return self._sid

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (by either side)."""
        return self._closed_reason is not None

    @property
    def close_reason(self) -> str | None:
        """Why the connection closed, or ``None`` while it is open."""
        return self._closed_reason

    # -- sending -------------------------------------------------------------------

    async def emit(self, event: str, *args: Any) -> None:
        """Send event ``event`` with ``args`` (JSON values, or bytes for a binary event).

        Returns once the packet is handed to the WebSocket. Raises :class:`Disconnected`
        if the connection is closed.
        """
        await self._send(sio.encode_event(self._namespace, event, args))

    async def call(self, event: str, *args: Any) -> list[Any]:
        """Send ``event`` asking for an ack, and return the ack's arguments.

        Waits for as long as the server takes (put a ``trio.fail_after`` around it for a
        deadline). Raises :class:`Disconnected` if the connection closes first.
        """
        ack_id = next(self._ack_ids)
        waiter = _Waiter()
        self._acks[ack_id] = waiter
        try:
            await self._send(sio.encode_event(self._namespace, event, args, ack_id))
            await waiter.done.wait()
        finally:
            self._acks.pop(ack_id, None)
        if waiter.result is None:
            raise Disconnected(self._closed_reason or "transport close")
        return waiter.result

    async def ack(self, event: Event, *args: Any) -> None:
        """Answer a server event that asked for an ack (``event.ack_id`` is set)."""
        if event.ack_id is None:
            raise ValueError(f"event {event.name!r} did not ask for an ack")
        await self._send(sio.encode(sio.Packet(sio.PacketType.ACK, self._namespace,
                                               list(args), event.ack_id)))

    async def _send(self, parts: list[str | bytes]) -> None:
        if self._closed_reason is not None:
            raise Disconnected(self._closed_reason)
        try:
            if len(parts) == 1 and not self._send_lock.locked():
                # The hot path: one text frame. trio-websocket keeps frames in order.
                text = parts[0]
                assert isinstance(text, str)
                await self._ws.send_message("4" + text)
                return
            async with self._send_lock:  # a binary packet's frames stay together
                for part in parts:
                    await self._ws.send_message("4" + part if isinstance(part, str) else part)
        except ConnectionClosed as exc:
            self._mark_closed("transport close")
            raise Disconnected(self._closed_reason or "transport close") from exc

    # -- receiving -----------------------------------------------------------------

    async def receive(self) -> Event:
        """The next event from the server, in arrival order.

        Raises :class:`Disconnected` once the connection is closed and every event that
        arrived before has been received.
        """
        try:
            return await self._events_receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise Disconnected(self._closed_reason or "transport close") from None

    def receive_nowait(self) -> Event | None:
        """The next event if one is already queued, else ``None``."""
        try:
            return self._events_receive.receive_nowait()
        except trio.WouldBlock:
            return None
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise Disconnected(self._closed_reason or "transport close") from None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            try:
                yield await self.receive()
            except Disconnected:
                return

    # -- connection lifecycle ------------------------------------------------------

    async def disconnect(self) -> None:
        """Send DISCONNECT for the namespace and close the WebSocket.

        Idempotent; never raises because the peer already went away.
        """
        await self._send_disconnect()
        await self._ws.aclose()

    async def _send_disconnect(self) -> None:
        if self._closed_reason is None:
            self._mark_closed("io client disconnect")
            with suppress(ConnectionClosed):
                await self._ws.send_message(
                    "4" + sio.encode_control(sio.Packet(sio.PacketType.DISCONNECT,
                                                        self._namespace)))

    async def _handshake(self, auth: Mapping[str, Any] | None) -> None:
        try:
            opening = await self._ws.get_message()
        except ConnectionClosed as exc:
            raise Disconnected("transport close during the handshake") from exc
        if not isinstance(opening, str) or not opening.startswith("0"):
            raise ProtocolError(f"expected an Engine.IO OPEN packet, got {opening!r:.80}")
        try:
            info = json.loads(opening[1:])
            self.engine_sid = str(info["sid"])
            self.ping_interval = float(info.get("pingInterval", 25000)) / 1000
            self.ping_timeout = float(info.get("pingTimeout", 20000)) / 1000
            self.max_payload = int(info.get("maxPayload", 1_000_000))
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError("malformed Engine.IO OPEN packet") from exc
        self._last_ping = trio.current_time()
        data: Any = self.recovery.auth(auth)
        await self._ws.send_message(
            "4" + sio.encode_control(sio.Packet(sio.PacketType.CONNECT, self._namespace, data))
        )
        while True:
            try:
                message = await self._ws.get_message()
            except ConnectionClosed as exc:
                raise Disconnected("transport close during the handshake") from exc
            if message == "2":
                await self._ws.send_message("3")
                continue
            if not isinstance(message, str) or not message.startswith("4"):
                continue  # NOOP, or anything else before CONNECT: not ours yet
            packet = self._decoder.feed_text(message[1:])
            if packet is None or packet.namespace != self._namespace:
                continue
            if packet.type is _EVENT and len(self._replayed) < _MAX_REPLAYED:
                # A recovery's replay comes before the CONNECT answer.
                self._replayed.append(self._event(packet))
            elif packet.type is sio.PacketType.CONNECT_ERROR:
                raise ConnectRefused(packet.data)
            elif packet.type is sio.PacketType.CONNECT:
                data = packet.data if isinstance(packet.data, dict) else {}
                sid, pid = data.get("sid"), data.get("pid")
                if not isinstance(sid, str):
                    raise ProtocolError("CONNECT without a sid")
                self._sid = sid
                state = self.recovery
                self.recovered = state.pid is not None and pid == state.pid
                if not self.recovered:
                    self._replayed.clear()  # not ours: a new session starts empty
                    state.offset = None
                state.pid = pid if isinstance(pid, str) else None
                return

    def _event(self, packet: sio.Packet) -> Event:
        """The event of an EVENT packet, its recovery offset (the last argument, a
        string, when recovery is on) taken off and remembered."""
        data = packet.data
        args = data[1:]
        if self.recovery.pid is not None and packet.id is None and args \
                and isinstance(args[-1], str):
            self.recovery.offset = args.pop()
        return Event(data[0], args, packet.id)

    async def _read(self) -> None:
        """The reader task: runs until the connection closes; never raises for what the
        server sends (a protocol violation closes the connection with that reason)."""
        ws = self._ws
        try:
            replayed, self._replayed = self._replayed, []
            for event in replayed:
                await self._events_send.send(event)
            while True:
                message = await ws.get_message()
                if isinstance(message, str):
                    kind = message[:1]
                    if kind == "4":
                        packet = self._decoder.feed_text(message[1:])
                    elif kind == "2":
                        self._last_ping = trio.current_time()
                        self.pings += 1
                        await ws.send_message("3")
                        continue
                    elif kind == "6":
                        continue
                    elif kind == "1":
                        self._mark_closed("transport close")
                        return
                    else:
                        raise ProtocolError(f"unexpected Engine.IO packet {message[:12]!r}")
                else:
                    packet = self._decoder.feed_binary(bytes(message))
                if packet is not None and packet.namespace == self._namespace:
                    kind_ = packet.type
                    if kind_ is _EVENT or kind_ is _BINARY_EVENT:
                        await self._events_send.send(self._event(packet))
                    elif kind_ is _ACK or kind_ is _BINARY_ACK:
                        waiter = self._acks.pop(packet.id, None)  # type: ignore[arg-type]
                        if waiter is not None:
                            waiter.result = packet.data
                            waiter.done.set()
                    elif kind_ is sio.PacketType.DISCONNECT:
                        self._mark_closed("io server disconnect")
                        return
        except ConnectionClosed:
            self._mark_closed("transport close")
        except ProtocolError as exc:
            self._mark_closed(f"protocol error: {exc}")
        finally:
            self._mark_closed("transport close")
            self._events_send.close()
            for waiter in self._acks.values():
                waiter.done.set()

    async def _watch_pings(self) -> None:
        """Close the connection when the server stops pinging (it is gone or stuck)."""
        while self._closed_reason is None:
            limit = self.ping_interval + self.ping_timeout
            deadline = self._last_ping + limit
            if trio.current_time() >= deadline:
                self._mark_closed("ping timeout")
                await self._ws.aclose()
                return
            await trio.sleep_until(deadline)

    def _mark_closed(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason


@asynccontextmanager
async def open_socketio(
    url: str,
    *,
    auth: Mapping[str, Any] | None = None,
    namespace: str = "/",
    path: str = "/socket.io/",
    max_events: int = 256,
    headers: list[tuple[bytes, bytes]] | None = None,
    disconnect_timeout: float = 5.0,
    max_message_size: int = 1 << 20,
    recovery: RecoveryState | None = None,
) -> AsyncIterator[SocketIOClient]:
    """Connect to the Socket.IO server at ``url`` and yield the connected client.

    On entry the Engine.IO handshake and the namespace CONNECT (with ``auth`` if given)
    are complete; a refusal raises :class:`ConnectRefused`, network failures raise
    trio-websocket's ``HandshakeError``/``ConnectionRejected`` or ``OSError``. There is
    no connect timeout of its own: put the ``async with`` under ``trio.fail_after``.
    The reader task lives until the block exits; on exit the client sends DISCONNECT and
    closes the WebSocket (waiting at most ``disconnect_timeout`` for the close handshake).
    At most ``max_events`` events wait unreceived (see the module's note on
    backpressure). An exception raised in the block propagates unchanged.

    ``recovery`` recovers an earlier connection's session (pass the
    :attr:`SocketIOClient.recovery` of that connection); events carry no recovery offset
    when they reach the caller.
    """
    client: SocketIOClient | None = None
    error: BaseException | None = None
    try:
        async with open_websocket_url(
            websocket_url(url, path), extra_headers=headers, connect_timeout=math.inf,
            disconnect_timeout=disconnect_timeout, max_message_size=max_message_size,
        ) as ws:
            client = SocketIOClient(ws, namespace, max_events, recovery)
            await client._handshake(auth)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client._read)
                    nursery.start_soon(client._watch_pings)
                    try:
                        yield client
                    except BaseException as exc:  # re-raised below, outside the group
                        error = exc
                    finally:
                        # A clean exit closes gracefully. After an exception (cancellation
                        # included: trio-websocket's own reader may be cancelled too, so no
                        # close handshake can complete) only DISCONNECT is sent, best effort.
                        with trio.CancelScope(shield=True), trio.move_on_after(
                            disconnect_timeout if error is None
                            else min(disconnect_timeout, 0.5)
                        ):
                            if error is None:
                                await client.disconnect()
                            else:
                                await client._send_disconnect()
                        nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                if error is not None:
                    raise error from None
                raise _unwrap(group) from None
            if error is not None:
                raise error
    except BaseException as exc:
        # trio-websocket answers a WebSocket ping that races our close frame and fails
        # with wsproto's LocalProtocolError (trio-websocket issue #184): the connection
        # was closing anyway, so that is not an error of this client's user.
        if exc is not error and client is not None and client.closed and _closing_race(exc):
            if error is not None:
                raise error from None
            return
        raise


def _closing_race(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_closing_race(inner) for inner in exc.exceptions)
    return isinstance(exc, LocalProtocolError) and "CLOSING" in str(exc)


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """A group of one exception is that exception (the reader never raises)."""
    if len(group.exceptions) == 1:
        only = group.exceptions[0]
        return _unwrap(only) if isinstance(only, BaseExceptionGroup) else only
    return group
