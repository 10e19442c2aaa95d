"""The typed Live Loop client: request a room, get matched, signal, chat, stop.

``async with open_client(url) as client:`` connects (see
:func:`liveloop.client.socketio.open_socketio`) and owns the reader task. Server events
come out of :meth:`LiveLoopClient.receive` / :meth:`LiveLoopClient.events` as frozen attrs
objects (:data:`LiveLoopEvent`); :meth:`LiveLoopClient.wait_for` picks one kind and keeps
the others for later, in order. Requests that ask for an ack return an :class:`Ack`.

The client remembers the last match it handed out (:attr:`LiveLoopClient.match`) and fills
the seed's target fields (``roomId``, ``remoteSocketId``, ``to``, ``remoteSocket``, ``name``)
from it; the server checks them, and relays only to the partner it knows anyway.
"""

from __future__ import annotations

import collections
import itertools
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar, overload

import attrs

from ..errors import ERROR_EVENT, ErrorCode
from ..events import (
    CALL_ANSWER,
    CALL_OFFER,
    MATCH_DONE,
    MESSAGE_RECEIVED,
    NEW_ICE_CANDIDATES,
    NEW_MESSAGE,
    REQUEST_ROOM,
    SEND_ICE_CANDIDATES,
    STOP_BY_REMOTE_USER,
    STOP_CALL,
)
from .socketio import Disconnected, Event, RecoveryState, SocketIOClient, open_socketio

__all__ = [
    "Ack",
    "AnswerReceived",
    "ChatMessage",
    "ErrorInfo",
    "IceCandidateReceived",
    "LiveLoopClient",
    "LiveLoopEvent",
    "Match",
    "OfferReceived",
    "OtherEvent",
    "RemoteStopped",
    "RequestRefused",
    "ServerError",
    "open_client",
]


# -- what the server sends ------------------------------------------------------------


@attrs.frozen(slots=True)
class Match:
    """``match-done``: the room, the partner, and whether this side sends the offer."""

    room_id: str
    remote_socket_id: str
    remote_name: str
    remote_image: str
    initiator: bool


@attrs.frozen(slots=True)
class OfferReceived:
    """``negotiation-call-offer`` from the partner; ``offer`` is ``{type, sdp}``."""

    room_id: str
    remote_socket_id: str
    remote_name: str
    offer: Mapping[str, Any]
    id: str | None = attrs.field(default=None, eq=False)
    """The sender's event id: a repeat of one already received is a retry (not part of
    equality: two events with the same content are equal)."""


@attrs.frozen(slots=True)
class AnswerReceived:
    """``negotiation-call-answer`` from the partner; ``answer`` is ``{type, sdp}``."""

    room_id: str
    remote_socket_id: str
    remote_name: str
    answer: Mapping[str, Any]
    id: str | None = attrs.field(default=None, eq=False)


@attrs.frozen(slots=True)
class IceCandidateReceived:
    """``new-ice-candidates``: an ``RTCIceCandidateInit`` object, or ``None`` (the end)."""

    candidate: Mapping[str, Any] | None


@attrs.frozen(slots=True)
class RemoteStopped:
    """``stop-by-remote-user``: the partner left the room (stop, Next or disconnect)."""


@attrs.frozen(slots=True)
class ChatMessage:
    """``Message:recived``: a chat line of the room; ``sender`` is a socket id (yours
    too: the server sends a message to both members)."""

    sender: str
    message: str
    id: str | None = attrs.field(default=None, eq=False)
    """The sender's event id: a repeat of one already received is a retry (not part of
    equality: two events with the same content are equal)."""


@attrs.frozen(slots=True)
class ServerError:
    """``error-message``: a request refused. ``code`` is an :class:`ErrorCode` value when
    the server's code is one this client knows, else the string as sent."""

    code: str
    message: str
    event: str
    retry_after: float | None = None


@attrs.frozen(slots=True)
class OtherEvent:
    """Any event this client does not know, or a known one whose payload is malformed."""

    name: str
    args: tuple[Any, ...]


LiveLoopEvent = (
    Match | OfferReceived | AnswerReceived | IceCandidateReceived | RemoteStopped
    | ChatMessage | ServerError | OtherEvent
)
"""Every object :meth:`LiveLoopClient.receive` can return."""

E = TypeVar("E", Match, OfferReceived, AnswerReceived, IceCandidateReceived, RemoteStopped,
            ChatMessage, ServerError, OtherEvent)


@attrs.frozen(slots=True)
class ErrorInfo:
    """Why a request was refused: ``{code, message}`` of a refusing ack."""

    code: str
    message: str


class RequestRefused(Exception):
    """Raised by :meth:`Ack.raise_for_error` for an ``{ok: false}`` ack."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error

    @property
    def code(self) -> str:
        return self.error.code


@attrs.frozen(slots=True)
class Ack:
    """The server's answer to a request sent with an ack: ``{ok: true}`` or
    ``{ok: false, error: {code, message}}``."""

    ok: bool
    error: ErrorInfo | None = None

    def raise_for_error(self) -> Ack:
        """Return self if ``ok``; raise :class:`RequestRefused` otherwise."""
        if not self.ok:
            raise RequestRefused(self.error or ErrorInfo("unknown", "refused"))
        return self

    @classmethod
    def parse(cls, args: list[Any]) -> Ack:
        """An ack's arguments as sent by Live Loop; anything else is a refusal."""
        payload = args[0] if args else None
        if isinstance(payload, dict):
            if payload.get("ok") is True:
                return _OK
            error = payload.get("error")
            if isinstance(error, dict):
                return cls(False, ErrorInfo(_code(error.get("code")), str(error.get("message",
                                                                                    ""))))
        return cls(False, ErrorInfo("invalid-ack", f"unexpected ack {args!r:.200}"))


_OK = Ack(True)
_STOPPED = RemoteStopped()
_CODES = {code.value: code for code in ErrorCode}


def _code(raw: object) -> str:
    text = str(raw)
    return _CODES.get(text, text)


def _text(raw: object) -> str:
    return raw if isinstance(raw, str) else ""


def _event_id(payload: Mapping[str, Any]) -> str | None:
    value = payload.get("id")
    return value if isinstance(value, str) else None


def parse_event(event: Event) -> LiveLoopEvent:
    """The typed form of one server event. Never raises: what is not understood comes
    back as :class:`OtherEvent`."""
    name, args = event.name, event.args
    payload = args[0] if args else None
    if name == NEW_ICE_CANDIDATES:  # the hot path first
        if isinstance(payload, dict):
            candidate = payload.get("candidate")
            if candidate is None or isinstance(candidate, dict):
                return IceCandidateReceived(candidate)
    elif name == STOP_BY_REMOTE_USER:
        return _STOPPED
    elif name == MESSAGE_RECEIVED:
        if isinstance(payload, dict) and isinstance(payload.get("message"), str):
            return ChatMessage(_text(payload.get("from")), payload["message"],
                               _event_id(payload))
    elif name == MATCH_DONE:
        if isinstance(payload, dict):
            details = payload.get("remoteUserDetails")
            if isinstance(details, dict) and isinstance(payload.get("roomId"), str):
                return Match(payload["roomId"], _text(details.get("socket")),
                             _text(details.get("userName")), _text(details.get("userImage")),
                             payload.get("initiator") is True)
    elif name == CALL_OFFER:
        if isinstance(payload, dict) and isinstance(payload.get("offer"), dict):
            details = payload.get("remoteUserDetails")
            details = details if isinstance(details, dict) else {}
            return OfferReceived(_text(payload.get("roomId")), _text(details.get("socket")),
                                 _text(details.get("userName")), payload["offer"],
                                 _event_id(payload))
    elif name == CALL_ANSWER:
        if isinstance(payload, dict) and isinstance(payload.get("ans"), dict):
            return AnswerReceived(_text(payload.get("roomId")),
                                  _text(payload.get("remoteSocketId")),
                                  _text(payload.get("name")), payload["ans"],
                                  _event_id(payload))
    elif name == ERROR_EVENT and isinstance(payload, dict):
        retry = payload.get("retryAfter")
        return ServerError(_code(payload.get("code")), _text(payload.get("message")),
                           _text(payload.get("event")),
                           float(retry) if isinstance(retry, int | float) else None)
    return OtherEvent(name, tuple(args))


# -- the client -------------------------------------------------------------------------


class LiveLoopClient:
    """One Live Loop user. Get one from :func:`open_client`.

    Methods may be called from several tasks, but events are a single stream: receive
    them from one task (``receive``, ``events``, ``wait_for`` and ``next_match`` all
    read that stream).
    """

    def __init__(self, sio: SocketIOClient, max_held: int = 256,
                 previous: LiveLoopClient | None = None) -> None:
        self._sio = sio
        self._held: collections.deque[LiveLoopEvent] = collections.deque(maxlen=max_held)
        self._match: Match | None = None
        self._name = ""
        self._image = ""
        # Event ids: unique per connection, and kept across a recovery so that a retry
        # on the new connection carries the id the server has seen.
        self._id_prefix = secrets.token_urlsafe(6)
        self._ids = itertools.count(1)
        if previous is not None and sio.recovered:
            # The same session on the server: the same call, and what was not read yet.
            self._held.extend(previous._held)
            self._match, self._name, self._image = (previous._match, previous._name,
                                                    previous._image)
            self._id_prefix, self._ids = previous._id_prefix, previous._ids

    @property
    def recovered(self) -> bool:
        """Whether this connection recovered the previous one's session (same socket
        id, same queue place or call, and the events missed meanwhile)."""
        return self._sio.recovered

    def new_event_id(self) -> str:
        """A fresh event ``id`` for ``newMessage``, offer or answer (the server drops a
        repeat, so resending an event with its id after a lost ack is harmless)."""
        return f"{self._id_prefix}-{next(self._ids)}"

    @property
    def sio(self) -> SocketIOClient:
        """The Socket.IO connection underneath (raw ``emit``/``call``/``receive``)."""
        return self._sio

    @property
    def sid(self) -> str:
        """This client's socket id: how the partner's events name it."""
        return self._sio.sid

    @property
    def match(self) -> Match | None:
        """The current call as this client has seen it: the last :class:`Match` received,
        cleared by :class:`RemoteStopped`, :meth:`stop_call` and "Next"."""
        return self._match

    # -- requests ----------------------------------------------------------------------

    async def request_room(self, name: str, user_image: str = "",
                           room_id: str | None = None) -> Ack:
        """``request-room``: queue me (from inside a room with its ``room_id``: "Next").

        Returns the server's ack; queued when ``ok`` (and also on ``invalid-room``, as
        the server documents). The match itself comes later: :meth:`next_match`.
        """
        self._name, self._image = name, user_image
        if room_id is not None and self._match is not None and room_id == self._match.room_id:
            self._match = None
        return Ack.parse(await self._sio.call(
            REQUEST_ROOM, {"name": name, "roomId": room_id, "userImage": user_image}))

    async def next_partner(self) -> Ack:
        """"Next": leave the current room (if any) and queue again, with the name and image
        of the last :meth:`request_room`."""
        current = self._match
        return await self.request_room(self._name, self._image,
                                       current.room_id if current else None)

    async def stop_call(self) -> Ack:
        """``stop-call``: end the current call (or stop waiting in the queue)."""
        current, self._match = self._match, None
        payload: dict[str, Any] = {"name": self._name}
        if current is not None:
            payload["roomId"] = current.room_id
            payload["remoteSocketId"] = current.remote_socket_id
        return Ack.parse(await self._sio.call(STOP_CALL, payload))

    @overload
    async def send_offer(self, offer: str | Mapping[str, Any], *,
                         ack: Literal[True] = ..., id: str | None = None) -> Ack: ...
    @overload
    async def send_offer(self, offer: str | Mapping[str, Any], *,
                         ack: Literal[False], id: str | None = None) -> None: ...
    async def send_offer(self, offer: str | Mapping[str, Any], *, ack: bool = True,
                         id: str | None = None) -> Ack | None:
        """``negotiation-call-offer`` to the partner; ``offer`` is the SDP text or an
        ``RTCSessionDescriptionInit``. With ``ack=False`` it returns once sent. ``id``
        (default: a new one) names the event; resend with the same ``id`` to retry."""
        description = {"type": "offer", "sdp": offer} if isinstance(offer, str) else offer
        payload = self._targeted({"offer": description, "id": id or self.new_event_id()},
                                 "remoteSocketId")
        return await self._request(CALL_OFFER, payload, ack)

    @overload
    async def send_answer(self, answer: str | Mapping[str, Any], *,
                          ack: Literal[True] = ..., id: str | None = None) -> Ack: ...
    @overload
    async def send_answer(self, answer: str | Mapping[str, Any], *,
                          ack: Literal[False], id: str | None = None) -> None: ...
    async def send_answer(self, answer: str | Mapping[str, Any], *, ack: bool = True,
                          id: str | None = None) -> Ack | None:
        """``negotiation-call-answer`` to the partner; ``answer`` is the SDP text or an
        ``RTCSessionDescriptionInit``. ``id`` as for :meth:`send_offer`."""
        description = {"type": "answer", "sdp": answer} if isinstance(answer, str) else answer
        payload = self._targeted({"ans": description, "id": id or self.new_event_id()},
                                 "remoteSocketId")
        return await self._request(CALL_ANSWER, payload, ack)

    @overload
    async def send_ice(self, candidate: Mapping[str, Any] | None, *,
                       ack: Literal[True] = ...) -> Ack: ...
    @overload
    async def send_ice(self, candidate: Mapping[str, Any] | None, *,
                       ack: Literal[False]) -> None: ...
    async def send_ice(self, candidate: Mapping[str, Any] | None, *, ack: bool = True
                       ) -> Ack | None:
        """``send-new-ice-candidates`` to the partner: an ``RTCIceCandidateInit``
        (``{candidate, sdpMid, sdpMLineIndex, usernameFragment}``) or ``None`` for the end
        of candidates."""
        current = self._match
        payload: dict[str, Any] = {"candidate": candidate}
        if current is not None:
            payload["to"] = current.remote_socket_id
        return await self._request(SEND_ICE_CANDIDATES, payload, ack)

    @overload
    async def send_message(self, text: str, *, ack: Literal[True] = ...,
                           id: str | None = None) -> Ack: ...
    @overload
    async def send_message(self, text: str, *, ack: Literal[False],
                           id: str | None = None) -> None: ...
    async def send_message(self, text: str, *, ack: bool = True, id: str | None = None
                           ) -> Ack | None:
        """``newMessage``: a chat line; both members (this client too) receive it as a
        :class:`ChatMessage`. ``id`` as for :meth:`send_offer`."""
        current = self._match
        payload: dict[str, Any] = {"message": text, "id": id or self.new_event_id()}
        if current is not None:
            payload["roomId"] = current.room_id
            payload["remoteSocket"] = current.remote_socket_id
        return await self._request(NEW_MESSAGE, payload, ack)

    def _targeted(self, payload: dict[str, Any], target_key: str) -> dict[str, Any]:
        current = self._match
        if current is not None:
            payload["roomId"] = current.room_id
            payload[target_key] = current.remote_socket_id
        if self._name:
            payload["name"] = self._name
        return payload

    async def _request(self, event: str, payload: dict[str, Any], ack: bool) -> Ack | None:
        if ack:
            return Ack.parse(await self._sio.call(event, payload))
        await self._sio.emit(event, payload)
        return None

    # -- events ------------------------------------------------------------------------

    async def receive(self) -> LiveLoopEvent:
        """The next server event, typed. Raises :class:`Disconnected` once the connection
        is closed and every earlier event was received."""
        if self._held:
            return self._held.popleft()
        return self._parse(await self._sio.receive())

    def _parse(self, raw: Event) -> LiveLoopEvent:
        event = parse_event(raw)
        if type(event) is Match:
            self._match = event
        elif event is _STOPPED:
            self._match = None
        return event

    async def wait_for(self, kind: type[E]) -> E:
        """The next event of type ``kind``. Events of other types that arrive first are
        kept, in order, for the next ``receive``/``events`` (at most ``max_held``: the
        oldest go first). Raises :class:`Disconnected` if the connection closes first."""
        for index, event in enumerate(self._held):
            if type(event) is kind:
                del self._held[index]
                return event
        while True:
            event = self._parse(await self._sio.receive())
            if type(event) is kind:
                return event
            self._held.append(event)

    async def next_match(self) -> Match:
        """Wait for the next ``match-done`` (after :meth:`request_room`)."""
        return await self.wait_for(Match)

    def events(self) -> AsyncIterator[LiveLoopEvent]:
        """Every server event, typed, until the connection closes (then the loop ends)."""
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[LiveLoopEvent]:
        while True:
            try:
                event = await self.receive()
            except Disconnected:
                return
            yield event

    async def disconnect(self) -> None:
        """Leave: the server removes this client from the queue or its room."""
        await self._sio.disconnect()


@asynccontextmanager
async def open_client(
    url: str,
    *,
    auth: Mapping[str, Any] | None = None,
    path: str = "/socket.io/",
    max_events: int = 256,
    disconnect_timeout: float = 5.0,
    previous: LiveLoopClient | None = None,
) -> AsyncIterator[LiveLoopClient]:
    """Connect a :class:`LiveLoopClient` to the Live Loop server at ``url``
    (``http://host:port``); see :func:`~liveloop.client.socketio.open_socketio` for what
    entering and leaving the block promise. Deadlines are the caller's
    (``trio.fail_after``).

    ``previous``, a client whose connection was lost, is recovered: if the server still
    holds its session, the new client has its socket id, call and unread events, gets
    what was sent meanwhile, and :attr:`LiveLoopClient.recovered` is true."""
    recovery: RecoveryState | None = previous.sio.recovery if previous is not None else None
    async with open_socketio(url, auth=auth, path=path, max_events=max_events,
                             disconnect_timeout=disconnect_timeout,
                             recovery=recovery) as sio:
        yield LiveLoopClient(sio, max_held=max_events, previous=previous)
