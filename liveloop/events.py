"""Live Loop's events: validated client->server payloads and server->client builders.

Every client payload becomes a frozen attrs object through ``parse``, which either returns
a value that is safe to hand to an actor or raises :class:`~liveloop.errors.PayloadError`.
Keys a payload carries beyond the documented ones are ignored (clients may add some);
the documented ones are checked for type and size. Nothing unvalidated reaches an actor.

The builders at the end produce the server's payloads with exactly the seed's keys (plus
``initiator`` on ``match-done``). Whatever identifies the sender (``from``,
``remoteUserDetails``, the relayed ``name`` and ``remoteSocketId``) is filled in by the
server from what it knows, never copied from the client.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Self

import attrs

from .config import Settings
from .errors import PayloadError

# Client -> server event names.
REQUEST_ROOM = "request-room"
CALL_OFFER = "negotiation-call-offer"
CALL_ANSWER = "negotiation-call-answer"
SEND_ICE_CANDIDATES = "send-new-ice-candidates"
STOP_CALL = "stop-call"
NEW_MESSAGE = "newMessage"
GET_ICE_SERVERS = "get-ice-servers"

# Server -> client event names (offer and answer keep their names when relayed).
MATCH_DONE = "match-done"
NEW_ICE_CANDIDATES = "new-ice-candidates"
STOP_BY_REMOTE_USER = "stop-by-remote-user"
MESSAGE_RECEIVED = "Message:recived"  # sic: the seed's wire name

MAX_ID = 128
"""Longest room or socket id accepted in a target field; the server's own are shorter."""

MAX_EVENT_ID = 64
"""Longest client-made event ``id`` (``newMessage``, offer, answer): it names a retry."""

_REFUSED_IN_NAMES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories a name may not hold: control, format (bidi overrides, zero-width
characters), lone surrogates, line and paragraph separators. Each can make a name shown
to a stranger read as something else, or break the line it is shown in."""
_IMAGE_URL = re.compile(r"data:image/[A-Za-z0-9.+-]{1,64};base64,[A-Za-z0-9+/]*={0,2}")
_ANSWER_TYPES = frozenset({"answer", "pranswer"})
_OFFER_TYPES = frozenset({"offer"})


def _fields(raw: object, event: str, *, absent_ok: bool = False) -> Mapping[str, object]:
    if raw is None and absent_ok:
        return {}
    if not isinstance(raw, dict):
        raise PayloadError(f"{event} expects an object payload")
    return raw


def _text(fields: Mapping[str, object], key: str, limit: int) -> str:
    value = fields.get(key)
    if not isinstance(value, str):
        raise PayloadError(f"{key} must be a string")
    if len(value) > limit:
        raise PayloadError(f"{key} is longer than {limit} characters")
    return value


def _optional_text(fields: Mapping[str, object], key: str, limit: int) -> str | None:
    value = fields.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{key} must be a string or null")
    if len(value) > limit:
        raise PayloadError(f"{key} is longer than {limit} characters")
    return value


def _display_name(fields: Mapping[str, object], settings: Settings) -> str:
    value = fields.get("name")
    if not isinstance(value, str):
        raise PayloadError("name is required and must be a string")
    name = value.strip()
    if not name:
        raise PayloadError("name must not be empty")
    if len(name) > settings.max_name:
        raise PayloadError(f"name is longer than {settings.max_name} characters")
    if not (name.isascii() and name.isprintable()) and any(
            unicodedata.category(c) in _REFUSED_IN_NAMES for c in name):
        raise PayloadError("name must not contain control, format or separator characters")
    return name


def _user_image(fields: Mapping[str, object], settings: Settings) -> str:
    value = fields.get("userImage")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PayloadError("userImage must be a string")
    if len(value) > settings.max_image:
        raise PayloadError(f"userImage is longer than {settings.max_image} characters")
    if value and _IMAGE_URL.fullmatch(value) is None:
        raise PayloadError("userImage must be empty or a data:image/...;base64, URL")
    return value


@attrs.frozen
class SessionDescription:
    """An ``RTCSessionDescriptionInit``: ``{type, sdp}``."""

    type: str
    sdp: str

    @classmethod
    def parse(cls, raw: object, key: str, types: frozenset[str], settings: Settings) -> Self:
        """The description under ``key``; its type must be one of ``types``."""
        if not isinstance(raw, dict):
            raise PayloadError(f"{key} must be an object {{type, sdp}}")
        kind = raw.get("type")
        # A str check before the set look-up: an unhashable value (an object, an array)
        # must be refused like any other wrong type, not raise TypeError.
        if not isinstance(kind, str) or kind not in types:
            raise PayloadError(f"{key}.type must be one of {sorted(types)}")
        return cls(type=kind, sdp=_text(raw, "sdp", settings.max_sdp))

    def to_json(self) -> dict[str, Any]:
        """``{type, sdp}``, as the browser's ``setRemoteDescription`` takes it."""
        return {"type": self.type, "sdp": self.sdp}


def _verbatim(text: str) -> bool:
    """Whether JSON writes ``text`` as it is, between quotes (C-speed checks)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


# The JSON of a candidate with empty strings and index 0: null adds 2 to a string
# field's size and 3 to the index's.
_CANDIDATE_JSON_BASE = len(json.dumps(
    {"candidate": "", "sdpMid": "", "sdpMLineIndex": 0, "usernameFragment": ""}))


@attrs.frozen
class IceCandidate:
    """An ``RTCIceCandidateInit``; absent optional members are null, as the browser has it."""

    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None
    username_fragment: str | None = None

    @classmethod
    def parse(cls, raw: object, settings: Settings) -> Self:
        """The candidate, capped at ``settings.max_candidate`` characters of JSON."""
        if not isinstance(raw, dict):
            raise PayloadError("candidate must be an object or null")
        limit = settings.max_candidate
        text = raw.get("candidate", "")
        if not isinstance(text, str):
            raise PayloadError("candidate.candidate must be a string")
        if len(text) > limit:
            raise PayloadError(f"candidate is larger than {limit} characters of JSON")
        index = raw.get("sdpMLineIndex")
        if index is not None and (
            isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 65535
        ):
            raise PayloadError("candidate.sdpMLineIndex must be an integer 0..65535 or null")
        value = cls(
            candidate=text,
            sdp_mid=_optional_text(raw, "sdpMid", limit),
            sdp_mline_index=index,
            username_fragment=_optional_text(raw, "usernameFragment", limit),
        )
        if value._json_size() > limit:
            raise PayloadError(f"candidate is larger than {limit} characters of JSON")
        return value

    def _json_size(self) -> int:
        """``len(json.dumps(self.to_json()))``, without encoding when no string needs
        escaping (the usual candidate: printable ASCII)."""
        strings = (self.candidate, self.sdp_mid, self.username_fragment)
        if not all(s is None or _verbatim(s) for s in strings):
            return len(json.dumps(self.to_json()))
        index = self.sdp_mline_index
        return (_CANDIDATE_JSON_BASE + len(self.candidate)
                + (2 if self.sdp_mid is None else len(self.sdp_mid))
                + (3 if index is None else len(str(index)) - 1)
                + (2 if self.username_fragment is None else len(self.username_fragment)))

    def to_json(self) -> dict[str, Any]:
        """``{candidate, sdpMid, sdpMLineIndex, usernameFragment}``, as ``toJSON()`` gives."""
        return {
            "candidate": self.candidate,
            "sdpMid": self.sdp_mid,
            "sdpMLineIndex": self.sdp_mline_index,
            "usernameFragment": self.username_fragment,
        }


@attrs.frozen
class RequestRoom:
    """``request-room``: queue me, or, from inside a room, "Next"."""

    name: str
    user_image: str = ""
    room_id: str | None = None

    @classmethod
    def parse(cls, raw: object, settings: Settings) -> Self:
        """``name`` is required (trimmed, 1..max_name); ``userImage`` may be empty."""
        fields = _fields(raw, REQUEST_ROOM)
        return cls(
            name=_display_name(fields, settings),
            user_image=_user_image(fields, settings),
            room_id=_optional_text(fields, "roomId", MAX_ID),
        )


def _negotiation_targets(fields: Mapping[str, object], settings: Settings
                         ) -> tuple[str | None, str | None, str | None]:
    """The optional ``roomId``, ``remoteSocketId`` and ``name`` of an offer or answer."""
    return (
        _optional_text(fields, "roomId", MAX_ID),
        _optional_text(fields, "remoteSocketId", MAX_ID),
        _optional_text(fields, "name", settings.max_name),
    )


@attrs.frozen
class CallOffer:
    """``negotiation-call-offer``: relay an SDP offer to my partner."""

    offer: SessionDescription
    room_id: str | None = None
    remote_socket_id: str | None = None
    name: str | None = None
    id: str | None = None

    @classmethod
    def parse(cls, raw: object, settings: Settings) -> Self:
        """``offer`` is required and of type ``offer``; the target fields are optional."""
        fields = _fields(raw, CALL_OFFER)
        return cls(
            SessionDescription.parse(fields.get("offer"), "offer", _OFFER_TYPES, settings),
            *_negotiation_targets(fields, settings),
            id=_optional_text(fields, "id", MAX_EVENT_ID),
        )

    @property
    def target(self) -> str | None:
        return self.remote_socket_id


@attrs.frozen
class CallAnswer:
    """``negotiation-call-answer``: relay an SDP answer to my partner."""

    ans: SessionDescription
    room_id: str | None = None
    remote_socket_id: str | None = None
    name: str | None = None
    id: str | None = None

    @classmethod
    def parse(cls, raw: object, settings: Settings) -> Self:
        """``ans`` is required and of type ``answer`` or ``pranswer``."""
        fields = _fields(raw, CALL_ANSWER)
        return cls(
            SessionDescription.parse(fields.get("ans"), "ans", _ANSWER_TYPES, settings),
            *_negotiation_targets(fields, settings),
            id=_optional_text(fields, "id", MAX_EVENT_ID),
        )

    @property
    def target(self) -> str | None:
        return self.remote_socket_id


@attrs.frozen
class SendIceCandidates:
    """``send-new-ice-candidates``: relay one ICE candidate (null: end of candidates)."""

    candidate: IceCandidate | None
    to: str | None = None

    @classmethod
    def parse(cls, raw: object, settings: Settings) -> Self:
        """``candidate`` must be present: an object, or null for end of candidates."""
        fields = _fields(raw, SEND_ICE_CANDIDATES)
        if "candidate" not in fields:
            raise PayloadError("candidate is required (null marks the end of candidates)")
        raw = fields["candidate"]
        return cls(
            candidate=None if raw is None else IceCandidate.parse(raw, settings),
            to=_optional_text(fields, "to", MAX_ID),
        )

    @property
    def room_id(self) -> str | None:
        return None

    @property
    def target(self) -> str | None:
        return self.to


@attrs.frozen
class StopCall:
    """``stop-call``: end my call (or, while queued, stop waiting)."""

    room_id: str | None = None
    remote_socket_id: str | None = None
    name: str | None = None

    @classmethod
    def parse(cls, raw: object, settings: Settings) -> Self:
        """Every field is optional; a missing payload is an empty one."""
        fields = _fields(raw, STOP_CALL, absent_ok=True)
        return cls(
            room_id=_optional_text(fields, "roomId", MAX_ID),
            remote_socket_id=_optional_text(fields, "remoteSocketId", MAX_ID),
            name=_optional_text(fields, "name", settings.max_name),
        )

    @property
    def target(self) -> str | None:
        return self.remote_socket_id


@attrs.frozen
class NewMessage:
    """``newMessage``: a chat line for both members of my room."""

    message: str
    room_id: str | None = None
    remote_socket: str | None = None
    id: str | None = None

    @classmethod
    def parse(cls, raw: object, settings: Settings) -> Self:
        """``message`` is 1..max_message characters and not only whitespace."""
        fields = _fields(raw, NEW_MESSAGE)
        message = _text(fields, "message", settings.max_message)
        if not message.strip():
            raise PayloadError("message must not be empty")
        return cls(
            message=message,
            room_id=_optional_text(fields, "roomId", MAX_ID),
            remote_socket=_optional_text(fields, "remoteSocket", MAX_ID),
            id=_optional_text(fields, "id", MAX_EVENT_ID),
        )

    @property
    def target(self) -> str | None:
        return self.remote_socket


@attrs.frozen
class GetIceServers:
    """``get-ice-servers``: which STUN/TURN servers to use; answered in the ack."""

    @classmethod
    def parse(cls, raw: object, settings: Settings) -> Self:
        """Takes no payload; one that is sent anyway is ignored."""
        return cls()


Relayed = CallOffer | CallAnswer | SendIceCandidates | NewMessage
"""The events a room relays between its members."""

Inbound = (RequestRoom | CallOffer | CallAnswer | SendIceCandidates | StopCall | NewMessage
           | GetIceServers)

INBOUND: Mapping[str, type[Inbound]] = {
    REQUEST_ROOM: RequestRoom,
    CALL_OFFER: CallOffer,
    CALL_ANSWER: CallAnswer,
    SEND_ICE_CANDIDATES: SendIceCandidates,
    STOP_CALL: StopCall,
    NEW_MESSAGE: NewMessage,
    GET_ICE_SERVERS: GetIceServers,
}
"""Every client->server event and the class that validates its payload."""

OUTBOUND = frozenset({
    MATCH_DONE, CALL_OFFER, CALL_ANSWER, NEW_ICE_CANDIDATES, STOP_BY_REMOTE_USER,
    MESSAGE_RECEIVED,
})
"""Every server->client Live Loop event except ``error-message`` (see :mod:`.errors`)."""


def parse(event: str, raw: object, settings: Settings) -> Inbound:
    """Validate ``raw`` as the payload of client event ``event`` (a key of :data:`INBOUND`)."""
    return INBOUND[event].parse(raw, settings)


# -- server -> client payloads ---------------------------------------------------------


def match_done(*, room_id: str, partner_sid: str, partner_name: str, partner_image: str,
               initiator: bool) -> dict[str, Any]:
    """``match-done``: the room and the partner; ``initiator`` says who sends the offer."""
    return {
        "roomId": room_id,
        "remoteUserDetails": {
            "socket": partner_sid, "userName": partner_name, "userImage": partner_image,
        },
        "initiator": initiator,
    }


def _with_id(payload: dict[str, Any], event_id: str | None) -> dict[str, Any]:
    # The sender's event id travels on, so that a receiver can drop a repeat too.
    if event_id is not None:
        payload["id"] = event_id
    return payload


def offer_relayed(*, room_id: str, sender_sid: str, sender_name: str,
                  offer: SessionDescription, event_id: str | None = None) -> dict[str, Any]:
    """``negotiation-call-offer`` as the partner receives it."""
    return _with_id({
        "remoteUserDetails": {"socket": sender_sid, "userName": sender_name},
        "roomId": room_id,
        "offer": offer.to_json(),
    }, event_id)


def answer_relayed(*, room_id: str, sender_sid: str, sender_name: str,
                   ans: SessionDescription, event_id: str | None = None) -> dict[str, Any]:
    """``negotiation-call-answer`` as the partner receives it."""
    return _with_id({"ans": ans.to_json(), "roomId": room_id, "name": sender_name,
                     "remoteSocketId": sender_sid}, event_id)


def candidate_relayed(candidate: IceCandidate | None) -> dict[str, Any]:
    """``new-ice-candidates``: ``{candidate}``, null included."""
    return {"candidate": None if candidate is None else candidate.to_json()}


def message_relayed(*, sender_sid: str, message: str, event_id: str | None = None
                    ) -> dict[str, Any]:
    """``Message:recived``: ``{from, message}`` (and the sender's ``id``), to both."""
    return _with_id({"from": sender_sid, "message": message}, event_id)
