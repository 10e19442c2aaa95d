"""The Engine.IO v4 server: handshake, HTTP long-polling, WebSocket and the upgrade.

:class:`EngineServer` is an ASGI app for one path. Its sessions are actor tasks in the
nursery of :meth:`EngineServer.run`, not in the request that created them: a polling
session outlives each of its requests. The registry of sessions (``sid`` -> session) is
this object's; it changes without awaiting, at handshake and when a session task ends.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Protocol, runtime_checkable

import trio

from ..config import Settings
from ..logs import clip
from ..metrics import Metrics
from ..wire import engineio as eio
from ..wire.errors import ProtocolError
from .api import DRAIN
from .asgi import Headers, Receive, Scope, Send, query, read_body, respond
from .cors import OriginPolicy
from .limits import HandshakeWindow, scope_client, trusted_networks
from .routing import tag_sid
from .session import (
    FLUSH_GRACE,
    DirectWriter,
    EngineSession,
    OutFrame,
    SessionApp,
    SessionClosed,
    Transport,
)
from .sockets import new_id
from .timers import Timers

log = logging.getLogger(__name__)

# Engine.IO's error codes, answered as JSON with status 400 (403 for FORBIDDEN).
TRANSPORT_UNKNOWN = 0
SESSION_ID_UNKNOWN = 1
BAD_HANDSHAKE_METHOD = 2
BAD_REQUEST = 3
FORBIDDEN = 4
UNSUPPORTED_PROTOCOL_VERSION = 5
_MESSAGES = {
    TRANSPORT_UNKNOWN: "Transport unknown",
    SESSION_ID_UNKNOWN: "Session ID unknown",
    BAD_HANDSHAKE_METHOD: "Bad handshake method",
    BAD_REQUEST: "Bad request",
    FORBIDDEN: "Forbidden",
    UNSUPPORTED_PROTOCOL_VERSION: "Unsupported protocol version",
}
MAX_PACKETS_PER_POLL = 16
"""Packets one polling GET's answer carries at most; the rest wait for the next GET.
python-engineio's client (python-socketio's) refuses a payload of more than 16 packets
(its ``Payload.max_decode_packets``) and drops the connection ("transport error"), so a
GET that found a burst queued (40 relayed ICE candidates) used to cost it its session."""
_PROBED_POLL_WAIT = 0.1
_PROBED = "probed"
_STRAGGLER_DELAY = 0.05
_CLOSED_POLLS = 1024
"""Polling sessions a client closed with no GET waiting, remembered at most (the oldest
is forgotten first): see ``EngineServer._closed_polls``."""
_CLOSED_POLL_TTL = 1.0
"""Seconds such a session's one late GET still gets its NOOP."""


class EngineServer:
    """Serves Engine.IO at one path; ``app_factory`` makes each session's app."""

    def __init__(self, settings: Settings, app_factory: Callable[[], SessionApp],
                 metrics: Metrics | None = None,
                 actors: tuple[Callable[..., Awaitable[None]], ...] = ()) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics(enabled=False)
        self.actors = actors
        """Started with the sessions' nursery (``nursery.start``), e.g. recovery's."""
        self.app_factory = app_factory
        self.sessions: dict[str, EngineSession] = {}
        self.origins = OriginPolicy(settings.allowed_origins)
        self._nursery: trio.Nursery | None = None
        self._max = settings.max_payload
        self.timers = Timers()
        self.proxies = trusted_networks(settings.trusted_proxies)
        self.handshakes = HandshakeWindow(settings.handshakes_per_ip,
                                          settings.handshake_window, trio.current_time)
        self.draining = False
        """Draining: no new session is taken (handshakes answer 503)."""
        self._ended: trio.Event | None = None
        """Set when a session ends, for :meth:`drained`."""
        self.worker: int | None = None
        """Under several workers, this worker's index: it tags the sids made here
        (:func:`~liveloop.server.routing.tag_sid`) so requests find their way back."""
        self._closed_polls: collections.OrderedDict[str, float] = collections.OrderedDict()
        """``sid`` -> deadline of polling sessions the client closed (a POSTed CLOSE) while
        no GET was waiting. A client may send its GET and its CLOSE at once, and the CLOSE
        can arrive first: as engine.io does, that GET gets the NOOP a waiting one would
        have got, rather than a 400. Bounded by ``_CLOSED_POLLS``; one GET each."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the sessions' nursery until cancelled; sessions end with it."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.timers.run)
            for actor in self.actors:
                await nursery.start(actor)
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- ASGI -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self._http(scope, receive, send)

    async def _error(self, send: Send, code: int, headers: Headers) -> None:
        body = json.dumps({"code": code, "message": _MESSAGES[code]}).encode()
        status = 403 if code == FORBIDDEN else 400
        await respond(send, status, body, headers, b"application/json")

    def _start(self, transport: Transport) -> EngineSession:
        if self._nursery is None:
            raise RuntimeError("EngineServer.run() is not running")
        sid = new_id() if self.worker is None else tag_sid(new_id(), self.worker)
        session = EngineSession(sid, self.settings, self.app_factory(), transport, self.timers)
        self.sessions[sid] = session
        self.metrics.session_opened(session.transport)
        self._nursery.start_soon(self._run_session, session)
        return session

    async def _run_session(self, session: EngineSession) -> None:
        try:
            await session.run()
        finally:
            self.sessions.pop(session.sid, None)
            reason = session.close_reason or "transport close"
            self.metrics.session_ended(session.transport, reason)
            log.debug("session closed", extra={"sid": session.sid, "reason": reason,
                                               "transport": session.transport})
            if self._ended is not None:
                self._ended.set()

    def _refusal(self, scope: Scope) -> tuple[int, Headers] | None:
        """Why a new session may not start now: the HTTP status (503 while draining or at
        ``max_sessions``, 429 over the client address's handshakes) and headers; None
        if it may. A handshake that passes is counted for its address."""
        if self.draining or len(self.sessions) >= self.settings.max_sessions:
            self.metrics.refused("draining" if self.draining else "sessions")
            return 503, []
        retry_after = self.handshakes.allow(scope_client(scope, self.proxies))
        if retry_after is not None:
            self.metrics.refused("handshakes_per_ip")
            return 429, [(b"retry-after", str(math.ceil(retry_after)).encode())]
        return None

    # -- draining -------------------------------------------------------------------------

    def drain(self) -> None:
        """Stop taking new sessions, and tell every session's app that the server drains
        (:data:`~.api.DRAIN`): it closes those it need not keep."""
        self.draining = True
        for session in list(self.sessions.values()):
            session.post(DRAIN)

    def close_all(self, reason: str) -> None:
        """Close every session now with ``reason``."""
        for session in list(self.sessions.values()):
            session.close(reason)

    async def drained(self) -> None:
        """Return once no session is left."""
        while self.sessions:
            self._ended = trio.Event()
            await self._ended.wait()

    def _open_packet(self, sid: str, upgrades: list[str]) -> eio.Packet:
        s = self.settings
        return eio.open_packet(
            sid, upgrades=upgrades, ping_interval_ms=round(s.ping_interval * 1000),
            ping_timeout_ms=round(s.ping_timeout * 1000), max_payload=s.max_payload,
        )

    # -- HTTP long-polling --------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if not self.origins.allows(scope):
            await self._error(send, FORBIDDEN, [])
            return
        cors = self.origins.headers(scope)
        if method == "OPTIONS":
            await respond(send, 204, b"", self.origins.preflight_headers(scope))
            return
        params = query(scope)
        if params.get("EIO") != "4":
            await self._error(send, UNSUPPORTED_PROTOCOL_VERSION, cors)
            return
        if params.get("transport") != "polling":
            await self._error(send, TRANSPORT_UNKNOWN, cors)
            return
        sid = params.get("sid")
        if sid is None:
            if method != "GET":
                await self._error(send, BAD_HANDSHAKE_METHOD, cors)
                return
            refusal = self._refusal(scope)
            if refusal is not None:
                status, headers = refusal
                await respond(send, status, HTTPStatus(status).phrase.encode(),
                              [*cors, *headers])
                return
            session = self._start(Transport.POLLING)
            body = eio.encode_payload([self._open_packet(session.sid, ["websocket"])])
            await respond(send, 200, body.encode(), cors)
            return
        if self._closed_polls and method == "GET":
            late = self._closed_polls.pop(sid, None)
            if late is not None and trio.current_time() <= late:
                await respond(send, 200, b"6", cors)
                return
        found = self.sessions.get(sid)
        if found is None or found.expire_overdue():
            await self._error(send, SESSION_ID_UNKNOWN, cors)
            return
        if found.state is Transport.WEBSOCKET:
            # Polling is over for this session. As for a duplicate WebSocket, answer a
            # beat late, so the refusal can't overtake frames in flight on the new one.
            await trio.sleep(_STRAGGLER_DELAY)
            await self._error(send, BAD_REQUEST, cors)
            return
        if method == "GET":
            await self._poll(found, send, cors)
        elif method == "POST":
            await self._post(found, receive, send, cors)
        else:
            await self._error(send, BAD_REQUEST, cors)

    async def _poll(self, session: EngineSession, send: Send, cors: Headers) -> None:
        """A GET: wait for packets and answer them all at once."""
        if session.polling_get is not None:
            # Two GETs at once: the client is broken; the spec says close the session.
            # A protocol violation, not a lost transport: nothing waits for a recovery.
            session.close("parse error")
            await self._error(send, BAD_REQUEST, cors)
            return
        if session.state is not Transport.PAUSED:
            frames: list[OutFrame] = []
            with trio.CancelScope() as waiting:
                session.polling_get = waiting
                try:
                    frames.append(await session.outbox.receive())
                    while len(frames) < MAX_PACKETS_PER_POLL:
                        frames.append(session.outbox.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    pass
                finally:
                    session.polling_get = None
                    session.taken(frames)
            answer = session.poll_answer
            session.poll_answer = None
            if frames or answer != _PROBED:
                if not frames:
                    frames.append(answer or ("1" if session.closed else "6"))
                body = "\x1e".join(
                    f if isinstance(f, str) else eio.encode_payload_record(
                        eio.Packet(eio.PacketType.MESSAGE, f)) for f in frames
                )
                await respond(send, 200, body.encode(), cors)
                return
        # Mid-upgrade: the client is pausing polling, and packets wait for the WebSocket.
        # As engine.io does with its periodic NOOP, give the upgrade a moment to finish:
        # a GET still here when it has is refused like any later one.
        with trio.move_on_after(_PROBED_POLL_WAIT):
            await session.upgraded.wait()
        if session.upgraded.is_set():
            # As for a duplicate WebSocket: let frames in flight on the new one go first.
            await trio.sleep(_STRAGGLER_DELAY)
            await self._error(send, BAD_REQUEST, cors)
        else:
            await respond(send, 200, b"6", cors)

    async def _post(self, session: EngineSession, receive: Receive, send: Send,
                    cors: Headers) -> None:
        """A POST: decode the whole payload, then hand its messages over in order."""
        if session.polling_post:
            session.close("parse error")
            await self._error(send, BAD_REQUEST, cors)
            return
        session.polling_post = True
        try:
            raw: bytes | None = None
            with trio.move_on_after(self.settings.body_timeout) as reading:
                raw = await read_body(receive, self._max)
            if reading.cancelled_caught:
                # Too slow: the connection goes (the body is unread), and the session.
                self.metrics.refused("body_timeout")
                session.close("transport error")
                await respond(send, 408, b"Request Timeout", [*cors, (b"connection", b"close")])
                return
            if raw is None:
                session.close("parse error")
                await respond(send, 413, b"Payload Too Large", cors)
                return
            try:
                packets = eio.decode_payload(
                    raw.decode("utf-8"), max_size=self._max,
                    max_packets=self.settings.max_packets_per_payload,
                )
                messages, close = _client_packets(session, packets)
            except (ProtocolError, UnicodeDecodeError) as exc:
                detail = exc.reason if isinstance(exc, ProtocolError) else "invalid UTF-8"
                log.info("protocol error; closing", extra={
                    "sid": session.sid, "reason": "parse error", "detail": clip(detail)})
                session.close("parse error")
                await self._error(send, BAD_REQUEST, cors)
                return
            if close and session.polling_get is None:
                self._remember_closed_poll(session.sid)
            try:
                if messages or close:
                    await session.deliver(messages, then_close=close)
            except SessionClosed:
                pass
        finally:
            session.polling_post = False
        # Only now: the client may send its next POST as soon as it has this answer.
        await respond(send, 200, b"ok", cors)

    def _remember_closed_poll(self, sid: str) -> None:
        closed = self._closed_polls
        closed[sid] = trio.current_time() + _CLOSED_POLL_TTL
        while len(closed) > _CLOSED_POLLS:
            closed.popitem(last=False)

    # -- WebSocket ----------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        await self.serve_websocket(scope, ASGIWebSocket(receive, send, scope))

    async def serve_websocket(self, scope: Scope, ws: WebSocket) -> None:
        """Serve one WebSocket request (``scope`` gives its query and headers) until its
        session closes: a new session, or the upgrade of a polling one. The ASGI path
        and ``liveloop serve``'s own transport (:mod:`.wstransport`) both come here."""
        params = query(scope)
        if (not self.origins.allows(scope) or params.get("EIO") != "4"
                or params.get("transport") != "websocket"):
            await ws.refuse()
            return
        sid = params.get("sid")
        if sid is None:
            refusal = self._refusal(scope)
            if refusal is not None:
                await ws.refuse(*refusal)
                return
            session = self._start(Transport.WEBSOCKET)
            await ws.accept()
            await ws.send_frames((eio.encode_text(self._open_packet(session.sid, [])),))
        else:
            found = self.sessions.get(sid)
            if found is None:
                await ws.refuse()
                return
            if found.state is not Transport.POLLING:
                # A second WebSocket for a session that has one: accepted, then closed,
                # and the session it named goes on untouched. Mid-upgrade, it is closed
                # once the upgrade has settled, so it can't overtake the first one.
                await ws.accept()
                with trio.move_on_after(self.settings.upgrade_timeout):
                    await found.upgraded.wait()
                # A beat more, so that its close does not reach the client before frames
                # already in flight on the first socket (a client may watch both).
                await trio.sleep(_STRAGGLER_DELAY)
                await ws.close(1008)
                return
            session = found
            session.state = Transport.PROBING  # before accepting: a second WebSocket sees it
            await ws.accept()
            if not await self._upgrade(session, ws):
                await ws.close(1000)
                return
        await self._websocket_loop(session, ws)

    async def _upgrade(self, session: EngineSession, ws: WebSocket) -> bool:
        """The probe (``2probe`` / ``3probe``), then ``5``; False if it failed or timed
        out, in which case the session goes on over polling."""
        try:
            with trio.move_on_after(self.settings.upgrade_timeout):
                if await ws.receive() != "2probe":
                    return False
                await ws.send_frames(("3probe",))
                # Release the pending GET with a NOOP so that the client can pause.
                session.state = Transport.PAUSED
                session.release_poll(_PROBED)
                if await ws.receive() != "5" or session.closed:
                    return False
                session.state = Transport.WEBSOCKET
                self.metrics.upgraded()
                session.upgraded.set()
                return True
            return False
        finally:
            if session.state is not Transport.WEBSOCKET:
                session.state = Transport.POLLING

    async def _websocket_loop(self, session: EngineSession, ws: WebSocket) -> None:
        """Read in this task until the session closes; then what it queued last has a
        moment to leave (CLOSE included), even if the client stopped reading.

        A :class:`DirectWebSocket` is written by the session task itself; any other
        by a writer task here."""
        direct = ws if isinstance(ws, DirectWebSocket) else None
        async with trio.open_nursery() as nursery:
            flushing = trio.CancelScope()
            if direct is not None:
                direct.start(nursery, session.take)
            else:
                nursery.start_soon(_websocket_writer, session, ws, flushing)
            try:
                with trio.CancelScope() as reading:
                    session.attach(reading, flushing, direct)
                    await self._websocket_reader(session, ws)
                    # The client closed or went away: what it sent before is still
                    # served (a DISCONNECT, say), then the session closes.
                    with trio.move_on_after(FLUSH_GRACE), contextlib.suppress(SessionClosed):
                        await session.deliver((), then_close=True)
                        await session.closed_event.wait()
            finally:
                session.close(session.close_reason or "transport close")
                if direct is not None:
                    direct.stop()
        if direct is not None:
            with trio.move_on_after(FLUSH_GRACE):
                await direct.finish(1000)

    async def _websocket_reader(self, session: EngineSession, ws: WebSocket) -> None:
        limit = self._max
        while not session.closed:
            message = await ws.receive()
            if message is None:
                if ws.violated:  # a frame the codec refused (too large, malformed)
                    session.close("parse error")
                    return
                break  # the client left
            try:
                if isinstance(message, str):
                    packet = eio.decode_text(message, max_size=limit)
                else:
                    packet = eio.decode_binary(message, max_size=limit)
                if packet.type is eio.PacketType.MESSAGE:
                    await session.deliver((packet.data,))
                    continue
                _, close = _client_packets(session, (packet,))
            except ProtocolError as exc:
                log.info("protocol error; closing", extra={
                    "sid": session.sid, "reason": "parse error", "detail": clip(exc.reason)})
                session.close("parse error")
                return
            except SessionClosed:
                return
            if close:
                return  # the caller closes, after what the client sent before


class WebSocket(Protocol):
    """One WebSocket as the Engine.IO code sees it: what a transport provides."""

    violated: bool
    """Whether the client broke the WebSocket protocol (then :meth:`receive` has
    returned None): the session closes as for a parse error, not a lost transport."""

    async def accept(self) -> None:
        """Complete the opening handshake."""

    async def refuse(self, status: int = 403, headers: Headers | None = None) -> None:
        """Refuse the handshake with HTTP ``status`` (and ``headers``); the request is
        over."""

    async def receive(self) -> str | bytes | None:
        """The next whole message (``str``: a text frame); None once the peer has gone
        or the socket is closing."""

    async def send_frames(self, frames: Sequence[OutFrame]) -> None:
        """Send these messages, in order (``str`` as text frames); after the peer has
        gone, does nothing."""

    async def close(self, code: int) -> None:
        """Start the closing handshake with ``code``."""


@runtime_checkable
class DirectWebSocket(WebSocket, DirectWriter, Protocol):
    """A :class:`WebSocket` that the session task writes to itself, without waiting
    (see :class:`~.session.DirectWriter`); its transport has no writer task."""

    def start(self, nursery: trio.Nursery, take: Callable[[], list[OutFrame]]) -> None:
        """The session's socket from now on: send what the session's outbox holds (``take``
        takes all of it, without waiting); tasks the transport needs (to flush what the
        kernel would not take) go in ``nursery``."""

    def stop(self) -> None:
        """The session has closed: stop any task of the transport's in the nursery."""

    async def finish(self, code: int) -> None:
        """Send what is left (pending, and in the outbox), then a Close with ``code``."""


_VIOLATION_CODES = frozenset({1002, 1003, 1007, 1009})
"""WebSocket close codes for a protocol error, bad data, or a message too big."""


class ASGIWebSocket:
    """:class:`WebSocket` over an ASGI server's ``receive`` / ``send``, after
    ``websocket.connect``.

    A send the server refuses (hypercorn raises h11's ``LocalProtocolError`` once the
    client's bytes have put the connection in error, or a stream error once it is gone)
    means the peer is gone: it is logged at DEBUG and later sends do nothing, as the
    :class:`WebSocket` protocol promises; the reader sees the disconnect.
    """

    def __init__(self, receive: Receive, send: Send, scope: Scope | None = None) -> None:
        self._receive = receive
        self._send = send
        self.violated = False
        self._responses = "websocket.http.response" in (scope or {}).get("extensions", {})
        """The server can answer the handshake with an HTTP response of ours."""
        self._gone = False

    async def _put(self, message: dict[str, object]) -> None:
        if self._gone:
            return
        try:
            await self._send(message)
        except Exception as exc:
            self._gone = True
            log.debug("WebSocket send refused: %r", exc)

    @property
    def gone(self) -> bool:
        """Whether the server has refused a send."""
        return self._gone

    async def accept(self) -> None:
        await self._put({"type": "websocket.accept"})

    async def refuse(self, status: int = 403, headers: Headers | None = None) -> None:
        if status == 403 or not self._responses:
            # The server refuses it itself (hypercorn: 403).
            await self._put({"type": "websocket.close", "code": 1008})
            return
        await self._put({"type": "websocket.http.response.start", "status": status,
                         "headers": [*(headers or ()), (b"content-length", b"0")]})
        await self._put({"type": "websocket.http.response.body", "body": b""})

    async def receive(self) -> str | bytes | None:
        message = await self._receive()
        if message["type"] != "websocket.receive":
            # websocket.disconnect; these codes mean the server refused the client's frames
            self.violated = message.get("code") in _VIOLATION_CODES
            return None
        text: str | None = message.get("text")
        if text is not None:
            return text
        return bytes(message.get("bytes") or b"")

    async def send_frames(self, frames: Sequence[OutFrame]) -> None:
        for frame in frames:
            if isinstance(frame, str):
                await self._put({"type": "websocket.send", "text": frame})
            else:
                await self._put({"type": "websocket.send", "bytes": frame})

    async def close(self, code: int) -> None:
        await self._put({"type": "websocket.close", "code": code})


async def _websocket_writer(session: EngineSession, ws: WebSocket,
                            scope: trio.CancelScope) -> None:
    """Drain the outbox until the session closes, then close the socket. Each wake-up
    takes everything queued, so the transport can write it at once."""
    outbox = session.outbox
    with scope:
        try:
            while True:
                try:
                    frames = session.take([await outbox.receive()])
                except trio.EndOfChannel:
                    break
                await ws.send_frames(frames)
                if isinstance(ws, ASGIWebSocket) and ws.gone:
                    session.close("transport error")
                    return
            await ws.close(1000)
        except Exception as exc:  # the server refuses sends once the peer left
            if not session.closed:
                log.info("write failed; closing", extra={
                    "sid": session.sid, "reason": "transport error", "detail": clip(repr(exc))})
            session.close("transport error")


def _client_packets(session: EngineSession,
                    packets: tuple[eio.Packet, ...] | list[eio.Packet]
                    ) -> tuple[list[str | bytes], bool]:
    """Sort what a client sent: MESSAGE data to deliver, and whether it asked to close.

    Handles PONG here. Raises :class:`ProtocolError` for packets a v4 client never
    sends on an open transport (OPEN, PING, UPGRADE), so nothing of that payload is
    delivered.
    """
    messages: list[str | bytes] = []
    close = False
    for packet in packets:
        kind = packet.type
        if kind is eio.PacketType.MESSAGE:
            if close:
                raise ProtocolError("message after close")
            messages.append(packet.data)
        elif kind is eio.PacketType.PONG:
            session.pong()
        elif kind is eio.PacketType.CLOSE:
            close = True
        elif kind is eio.PacketType.NOOP:
            pass
        else:
            raise ProtocolError(f"unexpected {kind.name} packet from client")
    return messages, close
