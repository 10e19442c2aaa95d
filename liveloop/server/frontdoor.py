"""``liveloop serve``'s own listener, the HTTP front door: Engine.IO WebSockets served
directly (by :mod:`.wstransport`), the rest by hypercorn.

Each connection's first request head is read here (with h11, at most
``MAX_HEAD`` bytes). A valid WebSocket upgrade for an Engine.IO path is completed by
:class:`~.wstransport.FastWebSocket` and served by :meth:`EngineServer.serve_websocket`.
Any other connection (polling, REST, a WebSocket elsewhere, anything malformed) goes to
hypercorn's own connection handler, which first reads back the bytes taken here; it
serves them through the ASGI app as ``hypercorn -k trio`` would.

With a certificate (``config.ssl_enabled``), the front door terminates TLS itself: each
connection's handshake happens here, then the same routing runs on the decrypted stream,
except that a WebSocket over TLS goes to hypercorn too (the lean transport writes to the
socket's file descriptor, beneath TLS). ALPN offers HTTP/1.1 only, which the head parser
reads; hypercorn's ASGI scopes then say ``https``/``wss``.

Under ``liveloop serve --workers N`` every request head is read here, not only the
first: :mod:`.routing` passes a request for another worker's session to that worker,
and :mod:`.http1` serves the rest itself, one request at a time.

This module is built on hypercorn's private interfaces (its Trio ``TCPServer``,
``Lifespan``, ``WorkerContext``): ``pyproject.toml`` pins hypercorn to the versions
listed in :data:`HYPERCORN_VERSIONS`, and a test fails on any other.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
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

from ..config import Settings
from ..metrics import Metrics
from . import hypercorn_eof
from .asgi import Scope
from .engine import EngineServer
from .http1 import MAX_HEAD, RECEIVE_SIZE, RoutedConnection
from .limits import ConnectionCount, client_address, trusted, trusted_networks
from .routing import Handoff, Worker
from .session import FLUSH_GRACE
from .wstransport import FastWebSocket

log = logging.getLogger(__name__)

HYPERCORN_VERSIONS = ((0, 17, 3), (0, 19))
"""The hypercorn versions whose private interfaces this module uses: from the first,
included, to the second, excluded (pyproject.toml's pin says the same)."""

_KEPT_HEADERS = frozenset((b"origin", b"host", b"x-forwarded-for"))
_TOO_MANY = (b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\n"
             b"connection: close\r\n\r\n")

_Engines = dict[str, EngineServer]


async def serve(app: Any, engines: _Engines, config: Config, settings: Settings, *,
                metrics: Metrics | None = None, worker: Worker | None = None,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``config.bind`` until cancelled: WebSockets at the ``engines``' paths
    (path without trailing slash -> server) here, the rest by hypercorn with ``app``;
    ``settings`` give the per-address connection limit; refusals count in ``metrics``.

    As one of several workers (``worker``), listen on the worker's own socket instead,
    route every request to the worker that owns its session, and serve HTTP here too
    (:mod:`.http1`, :mod:`.routing`); not with TLS (a TLS connection's state cannot be
    passed to another process).

    Reports the bound URLs (``http://127.0.0.1:PORT``) through ``task_status``. Runs
    hypercorn's ASGI lifespan once, around the listening, as hypercorn does.
    """
    tls = config.create_ssl_context() if config.ssl_enabled else None
    if tls is not None and worker is not None:
        raise ValueError("several workers do not terminate TLS: put a proxy in front")
    config.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(app, config.wsgi_max_body_size, None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    async with trio.open_nursery() as nursery:
        await nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        listeners: list[trio.SocketListener] = []
        binds: list[str] = []
        if worker is not None:
            sockets = [worker.listener]
        else:
            created = config.create_sockets()
            sockets = created.secure_sockets if tls else created.insecure_sockets
        for sock in sockets:
            sock.listen(config.backlog)
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            scheme = "https" if tls else "http"
            binds.append(f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}")
        server = Server(engines, wrapped, config, ConnectionState(lifespan_state.copy()),
                        settings, tls, metrics)
        if worker is not None:
            server.route(app, worker.handoff)
            nursery.start_soon(server.serve_handoffs, worker.handoff)
        task_status.started(binds)
        await trio.serve_listeners(server.handle, listeners)


class Server:
    """Handles each accepted connection: see the module docstring.

    Open connections are counted per client address (``max_connections_per_ip``): from
    the socket's peer at once, or, when the peer is a trusted proxy, from the first
    request head's ``X-Forwarded-For`` (a proxy's kept-alive connection may carry other
    clients' requests later: they count for the first). Over the limit the connection
    gets a 429 and is closed (over TLS, a direct peer over the limit is closed before the
    TLS handshake, with no answer).
    """

    def __init__(self, engines: _Engines, app: AppWrapper, config: Config,
                 state: ConnectionState, settings: Settings,
                 tls: ssl.SSLContext | None = None, metrics: Metrics | None = None) -> None:
        self._engines = engines
        self._tls = tls
        self._app = app
        self._config = config
        self._context = WorkerContext(None)
        self._state = state
        self._proxies = trusted_networks(settings.trusted_proxies)
        self.connections = ConnectionCount(settings.max_connections_per_ip)
        self._metrics = metrics if metrics is not None else Metrics(enabled=False)
        self._routed: RoutedConnection | None = None

    def route(self, app: Any, handoff: Handoff) -> None:
        """Serve as one of several workers: every request head is read here and routed
        (:class:`~liveloop.server.http1.RoutedConnection`)."""
        self._routed = RoutedConnection(app, frozenset(self._engines), handoff,
                                        self._config.keep_alive_timeout, self._websocket,
                                        self._metrics)

    async def serve_handoffs(self, handoff: Handoff) -> None:
        """Serve the connections other workers pass here, each in its own task."""
        async with trio.open_nursery() as nursery:
            while (passed := await handoff.receive()) is not None:
                sock, data = passed
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                nursery.start_soon(self.handle, stream, data)

    async def handle(self, stream: trio.abc.Stream, data: bytes = b"") -> None:
        """Serve one connection (``data``: bytes already read from it, when another
        worker passed it here); whatever goes wrong with it ends it alone. Under
        several workers a connection counts for its peer's address in the worker that
        holds it (a trusted proxy's is not counted: its heads are routed one by one)."""
        counted: list[str] = []  # the address this connection counts for, once known
        peer = _peer(stream)  # the socket's, before any TLS
        proxied = trusted(peer, self._proxies)
        try:
            if not proxied and not self._count(peer, counted):
                if self._tls is None:
                    await _too_many(stream)
                return
            if self._routed is not None and isinstance(stream, trio.SocketStream):
                await self._routed.serve(stream, data)
                return
            if self._tls is not None:
                stream = trio.SSLStream(stream, self._tls, server_side=True,
                                        https_compatible=True)
                with trio.move_on_after(self._config.ssl_handshake_timeout) as waiting:
                    await stream.do_handshake()
                if waiting.cancelled_caught:
                    return
            await self._serve(stream, peer, proxied, counted)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer went away
        except Exception:
            log.exception("connection failed")
        finally:
            for address in counted:
                self.connections.close(address)
            await stream.aclose()

    def _count(self, address: str, counted: list[str]) -> bool:
        if not self.connections.open(address):
            self._metrics.refused("connections_per_ip")
            return False
        counted.append(address)
        return True

    async def _serve(self, stream: trio.abc.Stream, peer: str, proxied: bool,
                     counted: list[str]) -> None:
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        received = bytearray()
        event: object = h11.NEED_DATA
        with trio.move_on_after(self._config.keep_alive_timeout) as waiting:
            while event is h11.NEED_DATA:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return  # closed before a whole head
                received += data
                http.receive_data(bytes(data))
                try:
                    event = http.next_event()
                except h11.RemoteProtocolError:
                    break  # hypercorn answers it (400, or 431 past MAX_HEAD)
        if waiting.cancelled_caught:
            self._metrics.refused("header_timeout")
            return  # as hypercorn's keep-alive timeout closes a silent connection
        if proxied:
            forwarded = ([value for name, value in event.headers if name == b"x-forwarded-for"]
                         if isinstance(event, h11.Request) else [])
            if not self._count(client_address(peer, forwarded, self._proxies), counted):
                await _too_many(stream)
                return
        websocket = (self._websocket(stream, http, event)
                     if isinstance(stream, trio.SocketStream) else None)
        if websocket is not None:
            del http, event, received  # held for the connection's life otherwise
            await websocket()
            return
        replay = (_TLSReplay if isinstance(stream, trio.SSLStream) else _Replay)(
            stream, bytes(received))
        server = TCPServer(self._app, self._config, self._context, self._state,
                           replay)  # type: ignore[arg-type]
        try:
            await server.run()
        except* h11.LocalProtocolError as group:
            # hypercorn's h11 state broken by the client's bytes (a refused handshake
            # with more after it): that connection's end, at INFO. Anything else is
            # left to handle(), which logs a failure at ERROR.
            hypercorn_eof.contained(group)

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
        scope["client"] = (_peer(stream), 0)
        ws = FastWebSocket(stream, http, key, http.trailing_data[0],
                           engine.settings.max_payload)

        async def serve() -> None:
            try:
                await engine.serve_websocket(scope, ws)
            finally:
                await ws.shutdown()

        return serve


def _peer(stream: trio.abc.Stream) -> str:
    """The address of the socket's peer ("" for one without: a Unix socket, say)."""
    sock = getattr(stream, "socket", None)
    try:
        name = sock.getpeername() if sock is not None else None
    except OSError:
        return ""
    return str(name[0]) if isinstance(name, tuple) else ""


async def _too_many(stream: trio.abc.Stream) -> None:
    """Answer 429 to whatever the client sends, and let the caller close."""
    with trio.move_on_after(FLUSH_GRACE):
        await stream.send_all(_TOO_MANY)


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


class _Replay(trio.abc.HalfCloseableStream):
    """A connection handed to hypercorn: reads first return the bytes already taken.

    It also keeps hypercorn's sends from colliding. hypercorn's ``TCPServer`` sends
    under a lock, but ends the connection (``send_eof``) outside it, from whichever
    task finished the exchange; on a malformed or pipelined request, that can be while
    the other task is writing the 400, and Trio's stream refuses the second sender with
    ``BusyResourceError`` ("Error in ASGI Framework"). Here an EOF asked for during a
    write is made when that write ends, and an EOF is made without yielding, so no
    write can start inside it.

    :mod:`.hypercorn_eof` guards the same race under ``hypercorn -k trio``; its
    docstring says why both guards exist.
    """

    def __init__(self, stream: trio.abc.Stream, head: bytes) -> None:
        self._stream = stream
        self._head = head
        self._sending = False
        self._eof_asked = False
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
        self._sending = True
        try:
            await self._stream.send_all(data)
        finally:
            self._sending = False
            if self._eof_asked:
                self._shut_write()

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if not isinstance(self._stream, trio.SocketStream):
            # TLS has no half-close. No checkpoint either: hypercorn calls this on its way
            # to aclose, in a scope that may be cancelled, and the close must happen.
            return
        await trio.lowlevel.checkpoint()
        if self._sending:
            self._eof_asked = True  # made by the write in progress, once it ends
        else:
            self._shut_write()

    def _shut_write(self) -> None:
        """End our half of the connection now; a later write fails as after the
        stream's own EOF (``ClosedResourceError``), which hypercorn expects."""
        self._eof_asked = False
        assert isinstance(self._stream, trio.SocketStream)  # send_eof skips TLS
        sock = self._stream.socket
        if sock.did_shutdown_SHUT_WR or sock.fileno() < 0:
            return
        with contextlib.suppress(OSError):  # the peer has gone already
            sock.shutdown(trio.socket.SHUT_WR)

    async def aclose(self) -> None:
        await self._stream.aclose()


class _TLSReplay(_Replay):
    """A TLS connection handed to hypercorn, handshake done: it answers hypercorn's
    questions of a ``trio.SSLStream`` (so scopes say ``https``/``wss``)."""

    def __init__(self, stream: trio.abc.Stream, head: bytes) -> None:
        assert isinstance(stream, trio.SSLStream)
        super().__init__(stream, head)
        self._tls = stream
        self.transport_stream = stream.transport_stream

    async def do_handshake(self) -> None:
        """Done already, by the front door."""
        await trio.lowlevel.checkpoint()

    def selected_alpn_protocol(self) -> str | None:
        protocol: str | None = self._tls.selected_alpn_protocol()
        return protocol
