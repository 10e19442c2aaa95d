"""``liveloop serve``'s WebSocket transport: an Engine.IO WebSocket framed by
:mod:`liveloop.wire.websocket` straight on the socket that the front door
(:mod:`.frontdoor`) took the upgrade request from.

One read system call for whatever frames have arrived, and one write for every packet
the session had queued, made by the session's own task without waiting (no writer task,
no per-frame queue or timer).

Why not hypercorn for these too: its WebSocket path enters a timeout scope per read and
writes one frame per system call through two task hops; it was half of the server's CPU
per relayed message.

Not negotiated here: WebSocket extensions (permessage-deflate; Engine.IO servers leave it
off by default) and subprotocols. Engine.IO's heartbeat ends dead sessions, so reads have
no deadline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from http import HTTPStatus
from os import read as _read
from os import write as _write

import h11
import trio

from ..wire import websocket as wsframe
from .session import FLUSH_GRACE, OutFrame

_RECEIVE_SIZE = 65536


class FastWebSocket:
    """An Engine.IO :class:`~liveloop.server.engine.DirectWebSocket` on a TCP socket,
    framed by :mod:`liveloop.wire.websocket`.

    Reads wait for the socket to be readable, then take what the kernel holds: one
    system call per arrival, however many frames it carries. Writes are attempted at
    once, without waiting: what the kernel does not take stays in :attr:`_pending`, and
    a flusher task (started in the connection's nursery, see :meth:`start`) sends it
    when the socket is writable. While bytes are pending the transport is not
    :attr:`idle`: the session then leaves its packets in its outbox, whose bound is
    what a slow reader may cost, and the flusher takes them once the kernel has taken
    the rest.

    Every byte goes to the socket through two methods, :meth:`_write_now` (what the
    kernel takes now, the rest appended to :attr:`_pending`) and :meth:`_drain` (waits
    until :attr:`_pending` is sent), so the order of bytes is decided in one place. Three
    tasks call them, one at a time by construction: the session task while the transport
    is :attr:`idle` (it writes what its events produced, with no task switch on the way:
    see ``docs/performance.md``), the flusher only while
    bytes are pending (the session task then writes nothing), and the connection task for
    the handshake and, once the session has closed and the flusher stopped, for
    :meth:`finish`.
    """

    def __init__(self, stream: trio.SocketStream, http: h11.Connection,
                 key: bytes, trailing: bytes, max_message: int) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._http: h11.Connection | None = http
        self._key = key
        self._trailing = trailing
        self._decoder = wsframe.FrameDecoder(max_message)
        self._messages: list[str | bytes] = []
        self._next = 0
        self._pending = bytearray()
        self._late_pong: bytes | None = None
        """The payload of the last Ping not yet answered because bytes were pending."""
        self._take: Callable[[], list[OutFrame]] = list
        """Takes what the session's outbox holds (nothing until :meth:`start`)."""
        self._nursery: trio.Nursery | None = None
        self._flusher: trio.CancelScope | None = None
        self._reading = True
        self._writing = True
        self._close_sent = False
        self.violated = False
        """The client broke the protocol (a frame the decoder refused)."""

    # -- the handshake ----------------------------------------------------------------

    async def accept(self) -> None:
        http, self._http = self._http, None  # done with HTTP: its buffers go now
        assert http is not None
        self._write_now(http.send(h11.InformationalResponse(
            status_code=101, reason=b"Switching Protocols", headers=[
                (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
                (b"sec-websocket-accept", wsframe.accept_token(self._key)),
            ])) or b"")
        await self._drain_within_grace()

    async def refuse(self, status: int = 403,
                     headers: Sequence[tuple[bytes, bytes]] | None = None) -> None:
        self._reading = False
        http, self._http = self._http, None
        assert http is not None
        response = h11.Response(status_code=status, reason=HTTPStatus(status).phrase, headers=[
            *(headers or ()), (b"content-length", b"0"), (b"connection", b"close")])
        self._write_now((http.send(response) or b"") + (http.send(h11.EndOfMessage()) or b""))
        await self._drain_within_grace()
        self._writing = False

    # -- reading ----------------------------------------------------------------------

    async def receive(self) -> str | bytes | None:
        messages = self._messages
        while self._next == len(messages):
            messages.clear()
            self._next = 0
            if not self._reading:
                return None
            data: bytes
            if self._trailing:
                data, self._trailing = self._trailing, b""
            else:
                await trio.lowlevel.wait_readable(self._fd)
                try:
                    data = _read(self._fd, _RECEIVE_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._reading = False
                    return None
            self._events(data)
        message = messages[self._next]
        self._next += 1
        return message

    def _events(self, data: bytes) -> None:
        """Sort what the decoder found in ``data``: whole messages to
        :attr:`_messages`; pings and closes answered."""
        try:
            events = self._decoder.feed(data)
        except wsframe.WebSocketError as exc:
            self._reading = False
            self.violated = True
            self._write_now(self._closing(exc.code))
            return
        ping: bytes | None = None
        for event in events:
            kind = type(event)
            if kind is str or kind is bytes:
                self._messages.append(event)  # type: ignore[arg-type]
            elif kind is wsframe.Ping:
                ping = event.payload  # type: ignore[union-attr]
            elif kind is wsframe.Close:
                # Answer with the same code, as the RFC asks; the socket is then done.
                self._reading = False
                self._write_now(self._closing(event.code))  # type: ignore[union-attr]
                return
        if ping is not None and not self._close_sent:
            # Only the last Ping of a read is answered (RFC 6455 5.5.3 allows it), and
            # while bytes are pending only the last one seen: a client that pings and
            # never reads costs one small payload, not a growing buffer.
            if self._pending:
                self._late_pong = ping
            else:
                self._write_now(wsframe.encode_pong(ping))

    def _closing(self, code: int | None) -> bytes:
        """The Close frame to send, unless one was sent already."""
        if self._close_sent:
            return b""
        self._close_sent = True
        return wsframe.encode_close(code)

    # -- writing ----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Whether :meth:`write_now` would go straight to the kernel."""
        return not self._pending and self._writing

    def write_now(self, frames: Sequence[OutFrame]) -> None:
        if self._close_sent:
            return  # closing: what comes now is dropped
        self._write_now(wsframe.encode_messages(frames))

    async def send_frames(self, frames: Sequence[OutFrame]) -> None:
        self.write_now(frames)
        await self._drain_within_grace()

    async def close(self, code: int) -> None:
        self._write_now(self._closing(code))
        await self._drain_within_grace()

    def _write_now(self, data: bytes) -> None:
        if not self._writing or not data:
            return
        if self._pending:
            # Behind what waits already. Only a Close frame comes here: the session
            # leaves packets in its outbox while bytes are pending, and pongs wait.
            self._pending += data
            return
        try:
            sent = _write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._gone()
            return
        if sent < len(data):
            self._pending += data[sent:]
            if self._nursery is not None and self._flusher is None:
                self._start_flusher(self._nursery)

    def _gone(self) -> None:
        """The peer is gone: nothing more can be written; the reader will see it."""
        self._writing = False
        self._pending.clear()

    async def _drain(self) -> None:
        """Wait until the kernel has taken every pending byte, and the Pong owed meanwhile
        (or the peer is gone)."""
        pending = self._pending
        while pending and self._writing:
            await trio.lowlevel.wait_writable(self._fd)
            try:
                sent = _write(self._fd, pending)
            except BlockingIOError:
                continue
            except OSError:
                self._gone()
                return
            del pending[:sent]
            if not pending and self._late_pong is not None:
                pong, self._late_pong = self._late_pong, None
                if not self._close_sent:
                    pending += wsframe.encode_pong(pong)

    async def _drain_within_grace(self) -> None:
        """:meth:`_drain` for the handshake and closing writes: a client that does not
        read them within ``FLUSH_GRACE`` is given up on (the session then closes)."""
        if not self._pending:
            return
        with trio.move_on_after(FLUSH_GRACE):
            await self._drain()
            return
        self._reading = False
        self._gone()

    def _start_flusher(self, nursery: trio.Nursery) -> None:
        self._flusher = trio.CancelScope()
        nursery.start_soon(self._flush, self._flusher)

    async def _flush(self, scope: trio.CancelScope) -> None:
        """The flusher: send what is pending, then what the session queued meanwhile,
        until nothing is left."""
        with scope:
            while self._pending and self._writing:
                await self._drain()
                frames = self._take()
                if frames and not self._close_sent:
                    self._pending += wsframe.encode_messages(frames)
        self._flusher = None

    def start(self, nursery: trio.Nursery, take: Callable[[], list[OutFrame]]) -> None:
        """Serve a session's outbox (``take`` takes what it holds): flushers start in
        ``nursery``. Sends what it holds already (queued before the socket was attached)."""
        self._nursery = nursery
        self._take = take
        if self._pending:  # left by the handshake's reads (a pong): the flusher takes all
            self._start_flusher(nursery)
            return
        frames = take()
        if frames:
            self.write_now(frames)

    def stop(self) -> None:
        """Stop the flusher, if one runs; :meth:`finish` takes over."""
        self._nursery = None
        if self._flusher is not None:
            self._flusher.cancel()

    async def finish(self, code: int) -> None:
        """After the session has closed and the flusher stopped: send what is pending
        and what the outbox still holds, then a Close frame with ``code``."""
        frames = self._take()
        if frames:
            self.write_now(frames)
        self._write_now(self._closing(code))
        await self._drain()

    async def shutdown(self) -> None:
        """After the Engine.IO side is done: end our half of the TCP connection (the
        caller closes the stream), and let go of the buffers at once."""
        self._writing = self._reading = False
        self._pending = bytearray()
        self._messages = []
        self._decoder = wsframe.FrameDecoder(0)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                 trio.BusyResourceError, OSError):
            await self._stream.send_eof()
