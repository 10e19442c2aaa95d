"""HTTP/1.1 served one request at a time, for ``liveloop serve --workers N``.

Under several workers each request head must be seen before the request is served, so
that a request for another worker's session is passed to that worker
(:mod:`.routing`). hypercorn keeps a connection for its whole life once it has it, so
here the front door keeps the connection itself: :class:`RoutedConnection` reads a
head (h11), routes it, serves it through the ASGI app (Engine.IO polling, REST) or as
an Engine.IO WebSocket (:mod:`.wstransport`), and reads the next head on the same
connection. With one worker, hypercorn serves HTTP as before.

What it serves: HTTP/1.1 and 1.0 requests with a ``Content-Length`` or chunked body,
kept alive unless either side says ``close``. The ASGI app's ``receive`` gives the body
as it arrives, then ``http.disconnect`` once the response is sent or the client has
gone. A head larger than 16 KiB is answered 431, a malformed one 400, and the
connection closed. A connection silent for ``keep_alive_timeout`` between requests is
closed, as hypercorn does.

The same limits as in one process (docs/operations.md), counted in the same metrics:
a connection accepted here whose first head is not whole within ``keep_alive_timeout``
(``LIVELOOP_HEADER_TIMEOUT``) is closed and counted ``refused{limit="header_timeout"}``,
as the single-process front door does (an idle kept-alive one is closed, not counted,
as hypercorn does); a polling POST's body is bounded by ``LIVELOOP_BODY_TIMEOUT`` in the
engine itself (408, the session closed, ``refused{limit="body_timeout"}``), whichever
loop serves the request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import h11
import trio

from ..metrics import Metrics
from .asgi import ASGIApp, Message
from .routing import Handoff

log = logging.getLogger(__name__)

WebSocketServer = Callable[[trio.SocketStream, h11.Connection, h11.Request],
                          Callable[[], Awaitable[None]] | None]

MAX_HEAD = 16 * 1024
"""Bytes of a request head at most (431 past them), here and in the front door."""
RECEIVE_SIZE = 65536
_TIMED_OUT = object()
"""What :meth:`RoutedConnection._head` says of a head not whole in time."""


def _addresses(stream: trio.SocketStream) -> tuple[tuple[str, int], tuple[str, int]]:
    """The client's and the server's (host, port), as an ASGI scope gives them."""
    client = stream.socket.getpeername()
    server = stream.socket.getsockname()
    return (client[0], client[1]), (server[0], server[1])


class RoutedConnection:
    """Serves the requests of connections for one worker; see the module docstring.

    ``websocket``, given the stream, the h11 connection that read a head and the head,
    returns what serves it as an Engine.IO WebSocket, or None when it is not one (then
    it is served as HTTP)."""

    def __init__(self, app: ASGIApp, engine_paths: frozenset[str], handoff: Handoff,
                 keep_alive_timeout: float, websocket: WebSocketServer,
                 metrics: Metrics | None = None) -> None:
        self._app = app
        self._metrics = metrics if metrics is not None else Metrics(enabled=False)
        self._paths = engine_paths
        self._handoff = handoff
        self._timeout = keep_alive_timeout
        self._websocket = websocket

    async def serve(self, stream: trio.SocketStream, data: bytes) -> None:
        """Serve requests on ``stream``, ``data`` being bytes already read from it,
        until the connection ends or is passed to the worker that owns a request."""
        leftover = data
        first = not data  # accepted here, not passed by another worker
        addresses = None  # the client's and ours: looked up once, for the first exchange
        while True:
            http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
            received = bytearray(leftover)
            if leftover:
                http.receive_data(leftover)
            head = await self._head(stream, http, received)
            if head is None:
                return
            if head is _TIMED_OUT:
                if first:
                    self._metrics.refused("header_timeout")
                return
            assert isinstance(head, h11.Request)
            first = False
            owner = self._handoff.route(head.target, self._paths)
            if owner != self._handoff.index:
                await self._handoff.send(owner, stream.socket.fileno(), bytes(received))
                return  # the caller closes this worker's descriptor only
            del received
            websocket = self._websocket(stream, http, head)
            if websocket is not None:
                del http, head
                await websocket()
                return
            if addresses is None:
                addresses = _addresses(stream)
            if not await self._exchange(stream, http, head, addresses):
                return
            leftover = http.trailing_data[0]

    async def _head(self, stream: trio.SocketStream, http: h11.Connection,
                    received: bytearray) -> h11.Request | object | None:
        """The next request's head; :data:`_TIMED_OUT` when it was not whole within
        the timeout; None when the connection is to end otherwise (closed, or a
        malformed head, which is answered first)."""
        with trio.move_on_after(self._timeout):
            while True:
                try:
                    event = http.next_event()
                except h11.RemoteProtocolError as exc:
                    await _refuse(stream, http, exc.error_status_hint)
                    return None
                if isinstance(event, h11.Request):
                    return event
                if event is not h11.NEED_DATA:
                    return None  # ConnectionClosed
                data = await stream.receive_some(RECEIVE_SIZE)
                received += data
                http.receive_data(bytes(data))
        return _TIMED_OUT

    async def _exchange(self, stream: trio.SocketStream, http: h11.Connection,
                        head: h11.Request,
                        addresses: tuple[tuple[str, int], tuple[str, int]]) -> bool:
        """Serve one request through the ASGI app; whether the connection may carry
        another. ``addresses``: the client's and the server's (the scope's)."""
        path, _, query = head.target.partition(b"?")
        client, server = addresses
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": head.http_version.decode("ascii"),
            "method": head.method.decode("ascii"),
            "scheme": "http",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": list(head.headers),
            "client": client,
            "server": server,
            "extensions": {},
        }
        done = trio.Event()
        start: Message | None = None
        head_sent = False

        async def receive() -> Message:
            while not done.is_set():
                try:
                    event = http.next_event()
                except h11.RemoteProtocolError:
                    break
                if isinstance(event, h11.Data):
                    return {"type": "http.request", "body": bytes(event.data),
                            "more_body": True}
                if isinstance(event, h11.EndOfMessage):
                    return {"type": "http.request", "body": b"", "more_body": False}
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    http.receive_data(bytes(data))  # b"": the client closed
                    continue
                if event is h11.PAUSED:
                    await done.wait()  # the body was read: until the response is sent
                break
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal start, head_sent
            kind = message["type"]
            if kind == "http.response.start":
                start = message
                return
            if kind != "http.response.body" or start is None or done.is_set():
                return
            data = b""
            if not head_sent:
                data = http.send(h11.Response(
                    status_code=start["status"], headers=list(start.get("headers", ())),
                )) or b""
                head_sent = True
            body = message.get("body", b"")
            if body:
                data += http.send(h11.Data(data=body)) or b""
            if not message.get("more_body", False):
                data += http.send(h11.EndOfMessage()) or b""
                done.set()
            await stream.send_all(data)

        try:
            await self._app(scope, receive, send)
        except Exception:
            log.exception("request %s %s failed", scope["method"], scope["path"])
            if start is None:
                await _refuse(stream, http, 500)
            return False
        if not done.is_set():
            if start is None:
                await _refuse(stream, http, 500)
            return False
        # What is left of a body the app did not read is dropped if it has arrived
        # already; if not, the connection closes (as hypercorn does). Another request
        # follows only when both sides are done.
        try:
            while http.their_state is h11.SEND_BODY:
                if http.next_event() is h11.NEED_DATA:
                    return False
        except h11.RemoteProtocolError:
            return False
        return http.our_state is h11.DONE and http.their_state is h11.DONE


async def _refuse(stream: trio.SocketStream, http: h11.Connection, status: int) -> None:
    """Answer ``status`` with no body and close (a malformed head, an app failure)."""
    try:
        data = http.send(h11.Response(status_code=status, headers=[
            (b"content-length", b"0"), (b"connection", b"close")]))
        data = (data or b"") + (http.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError:
        return  # a response was already on its way
    await stream.send_all(data)
