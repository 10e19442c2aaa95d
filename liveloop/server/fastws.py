"""``liveloop serve``'s own listener: Engine.IO WebSockets served directly, the rest by
hypercorn.

Each connection's first request head is read here (with h11, at most
``_MAX_HEAD`` bytes). A valid WebSocket upgrade for an Engine.IO path is completed here
and the socket is served by :meth:`EngineServer.serve_websocket` through
:class:`FastWebSocket`, which frames with :mod:`liveloop.wire.websocket` straight on the
socket: one read system call for whatever frames have arrived, and one write for every
packet the session had queued, made by the session's own task without waiting (no
writer task, no per-frame queue or timer). Any other connection (polling, REST, a
WebSocket elsewhere, anything malformed) goes to hypercorn's own connection handler,
which first reads back the bytes taken here; it serves them through the ASGI app as
``hypercorn -k trio`` would.

Why not hypercorn for these too: its WebSocket path enters a timeout scope per read and
writes one frame per system call through two task hops; it was half of the server's CPU
per relayed message.

Not negotiated here: WebSocket extensions (permessage-deflate; Engine.IO servers leave it
off by default) and subprotocols. Engine.IO's heartbeat ends dead sessions, so reads have
no deadline.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from os import read as _read
from os import write as _write
from typing import Any
from urllib.parse import unquote

import h11
import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from ..wire import websocket as wsframe
from .asgi import Scope
from .engine import EngineServer
from .http1 import RoutedConnection
from .routing import Handoff, Worker
from .session import FLUSH_GRACE, OutFrame, take_all

log = logging.getLogger(__name__)

_MAX_HEAD = 16 * 1024
_KEPT_HEADERS = frozenset((b"origin", b"host"))
_RECEIVE_SIZE = 65536

_Engines = dict[str, EngineServer]


async def serve(app: Any, engines: _Engines, config: Config, *,
                worker: Worker | None = None,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``config.bind`` until cancelled: WebSockets at the ``engines``' paths
    (path without trailing slash -> server) here, the rest by hypercorn with ``app``.

    As one of several workers (``worker``), listen on the worker's own socket instead,
    route every request to the worker that owns its session, and serve HTTP here too
    (:mod:`.http1`, :mod:`.routing`).

    Reports the bound URLs (``http://127.0.0.1:PORT``) through ``task_status``. Runs
    hypercorn's ASGI lifespan once, around the listening, as hypercorn does.
    """
    if config.ssl_enabled:
        raise ValueError("liveloop serve does not terminate TLS")
    config.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(app, config.wsgi_max_body_size, None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    async with trio.open_nursery() as nursery:
        await nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        listeners: list[trio.SocketListener] = []
        binds: list[str] = []
        sockets = [worker.listener] if worker else config.create_sockets().insecure_sockets
        for sock in sockets:
            sock.listen(config.backlog)
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
        server = Server(engines, wrapped, config, ConnectionState(lifespan_state.copy()))
        if worker is not None:
            server.route(app, worker.handoff)
            nursery.start_soon(server.serve_handoffs, worker.handoff)
        task_status.started(binds)
        await trio.serve_listeners(server.handle, listeners)


class Server:
    """Handles each accepted connection: see the module docstring."""

    def __init__(self, engines: _Engines, app: AppWrapper, config: Config,
                 state: ConnectionState) -> None:
        self._engines = engines
        self._app = app
        self._config = config
        self._context = WorkerContext(None)
        self._state = state
        self._routed: RoutedConnection | None = None

    def route(self, app: Any, handoff: Handoff) -> None:
        """Serve as one of several workers: every request head is read here and routed
        (:class:`~liveloop.server.http1.RoutedConnection`)."""
        self._routed = RoutedConnection(app, frozenset(self._engines), handoff,
                                        self._config.keep_alive_timeout, self._websocket)

    async def serve_handoffs(self, handoff: Handoff) -> None:
        """Serve the connections other workers pass here, each in its own task."""
        async with trio.open_nursery() as nursery:
            while (passed := await handoff.receive()) is not None:
                sock, data = passed
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                nursery.start_soon(self.handle, stream, data)

    async def handle(self, stream: trio.abc.HalfCloseableStream, data: bytes = b"") -> None:
        """Serve one connection (``data``: bytes already read from it, when another
        worker passed it here); whatever goes wrong with it ends it alone."""
        try:
            if self._routed is not None and isinstance(stream, trio.SocketStream):
                await self._routed.serve(stream, data)
            else:
                await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer went away
        except Exception:
            log.exception("connection failed")
        finally:
            await stream.aclose()

    async def _serve(self, stream: trio.abc.HalfCloseableStream) -> None:
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        received = bytearray()
        event: object = h11.NEED_DATA
        with trio.move_on_after(self._config.keep_alive_timeout) as waiting:
            while event is h11.NEED_DATA:
                data = await stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    return  # closed before a whole head
                received += data
                http.receive_data(bytes(data))
                try:
                    event = http.next_event()
                except h11.RemoteProtocolError:
                    break  # hypercorn answers it (400, or 431 past _MAX_HEAD)
        if waiting.cancelled_caught:
            return  # as hypercorn's keep-alive timeout closes a silent connection
        websocket = (self._websocket(stream, http, event)
                     if isinstance(stream, trio.SocketStream) else None)
        if websocket is not None:
            del http, event, received
            await websocket()
            return
        server = TCPServer(self._app, self._config, self._context, self._state,
                           _Replay(stream, bytes(received)))  # type: ignore[arg-type]
        await server.run()


    def _websocket(self, stream: trio.SocketStream, http: h11.Connection, event: object
                   ) -> Callable[[], Awaitable[None]] | None:
        """If ``event`` (read by ``http``) is an Engine.IO WebSocket handshake: what
        serves the WebSocket until it ends. It holds neither ``http`` nor ``event``:
        the caller drops them before awaiting it, as they would be kept for the
        connection's life otherwise."""
        upgrade = _upgrade(http, event, self._engines)
        if upgrade is None:
            return None
        engine, scope, key = upgrade
        ws = FastWebSocket(stream, http, key, http.trailing_data[0],
                           engine.settings.max_payload)

        async def serve() -> None:
            try:
                await engine.serve_websocket(scope, ws)
            finally:
                await ws.shutdown()

        return serve


def _upgrade(http: h11.Connection, event: object, engines: _Engines
             ) -> tuple[EngineServer, Scope, bytes] | None:
    """For a valid WebSocket handshake (RFC 6455 4.2.1, as hypercorn checks it) to one of
    ``engines``' paths, with nothing after the head but frames: the engine, the
    request's scope (path, query, headers) and the key. None for anything else."""
    if not isinstance(event, h11.Request) or event.method != b"GET":
        return None
    if event.http_version != b"1.1":
        return None
    path, _, query_string = event.target.partition(b"?")
    try:
        path_text = unquote(path.decode("ascii"))
    except UnicodeDecodeError:
        return None
    engine = engines.get(path_text.rstrip("/"))
    if engine is None:
        return None
    key: bytes | None = None
    upgrade = version = b""
    connection: list[bytes] = []
    for name, value in event.headers:
        if name == b"sec-websocket-key":
            key = value
        elif name == b"upgrade":
            upgrade = value.lower()
        elif name == b"sec-websocket-version":
            version = value
        elif name == b"connection":
            connection.extend(token.strip().lower() for token in value.split(b","))
    if key is None or upgrade != b"websocket" or version != b"13" or b"upgrade" not in connection:
        return None
    try:
        if type(http.next_event()) is not h11.EndOfMessage or http.next_event() is not h11.PAUSED:
            return None  # a body, say: hypercorn refuses it
    except h11.RemoteProtocolError:
        return None
    scope: Scope = {
        "type": "websocket",
        "path": path_text,
        "raw_path": path,
        "query_string": query_string,
        # What the engine reads (the origin check); the rest would be kept for nothing.
        "headers": [(name, value) for name, value in event.headers if name in _KEPT_HEADERS],
    }
    return engine, scope, key


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
        self._outbox: trio.MemoryReceiveChannel[OutFrame] | None = None
        self._nursery: trio.Nursery | None = None
        self._flusher: trio.CancelScope | None = None
        self._reading = True
        self._writing = True
        self._close_sent = False

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

    async def refuse(self) -> None:
        self._reading = False
        http, self._http = self._http, None
        assert http is not None
        response = h11.Response(status_code=403, reason=b"Forbidden", headers=[
            (b"content-length", b"0"), (b"connection", b"close")])
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
                frames = take_all(self._outbox)
                if frames and not self._close_sent:
                    self._pending += wsframe.encode_messages(frames)
        self._flusher = None

    def start(self, nursery: trio.Nursery, outbox: trio.MemoryReceiveChannel[OutFrame]
              ) -> None:
        """Serve ``outbox`` (a session's): flushers start in ``nursery``. Sends what it
        holds already (queued before the socket was attached)."""
        self._nursery = nursery
        self._outbox = outbox
        if self._pending:  # left by the handshake's reads (a pong): the flusher takes all
            self._start_flusher(nursery)
            return
        frames = take_all(outbox)
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
        frames = take_all(self._outbox)
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


class _Replay(trio.abc.HalfCloseableStream):
    """A connection handed to hypercorn: reads first return the bytes already taken."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, head: bytes) -> None:
        self._stream = stream
        self._head = head
        self.socket = getattr(stream, "socket", None)
        """hypercorn's TCPServer asks the socket for the peer's address."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        head = self._head
        if not head:
            return await self._stream.receive_some(max_bytes)
        size = len(head) if max_bytes is None else max_bytes
        self._head = head[size:]
        await trio.lowlevel.checkpoint()
        return head[:size]

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()
