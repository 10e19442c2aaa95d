"""Payload validation and the outgoing payload builders."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liveloop import events
from liveloop.config import Settings
from liveloop.errors import ErrorCode, PayloadError, error_ack, error_event, ok_ack
from liveloop.events import (
    CallAnswer,
    CallOffer,
    IceCandidate,
    NewMessage,
    RequestRoom,
    SendIceCandidates,
    SessionDescription,
    StopCall,
)

S = Settings()
PNG = "data:image/png;base64,iVBORw0KGgo="
OFFER = {"type": "offer", "sdp": "v=0\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\n"}
CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host",
             "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"}


def refused(cls: Any, raw: object, settings: Settings = S) -> str:
    with pytest.raises(PayloadError) as info:
        cls.parse(raw, settings)
    assert info.value.code is ErrorCode.INVALID_PAYLOAD
    return info.value.message


# -- request-room ----------------------------------------------------------------------


def test_request_room_seed_payload() -> None:
    parsed = RequestRoom.parse({"name": "  Ann  ", "roomId": None, "userImage": PNG}, S)
    assert parsed == RequestRoom(name="Ann", user_image=PNG, room_id=None)


def test_request_room_optional_fields() -> None:
    assert RequestRoom.parse({"name": "Ann"}, S) == RequestRoom(name="Ann")
    assert RequestRoom.parse({"name": "Ann", "userImage": ""}, S).user_image == ""
    assert RequestRoom.parse({"name": "Ann", "roomId": "r1"}, S).room_id == "r1"
    assert RequestRoom.parse({"name": "Ann", "extra": [1]}, S) == RequestRoom(name="Ann")


@pytest.mark.parametrize("raw", [
    None, "Ann", [], {}, {"name": None}, {"name": 3}, {"name": ""}, {"name": "   "},
    {"name": "x" * 41}, {"name": "A\x00n"}, {"name": "Ann", "roomId": 5},
    {"name": "Ann", "roomId": "r" * 200}, {"name": "Ann", "userImage": 7},
    {"name": "Ann", "userImage": "http://example.com/a.png"},
    {"name": "Ann", "userImage": "data:text/html;base64,AAAA"},
    {"name": "Ann", "userImage": "data:image/png;base64,<script>"},
    {"name": "Ann", "userImage": "data:image/png;base64," + "A" * 70_000},
])
def test_request_room_refused(raw: object) -> None:
    refused(RequestRoom, raw)


def test_name_cap_is_the_setting() -> None:
    small = Settings(max_name=3)
    assert RequestRoom.parse({"name": "Ann"}, small).name == "Ann"
    assert "longer than 3" in refused(RequestRoom, {"name": "Anne"}, small)
    assert RequestRoom.parse({"name": "x" * 40}, S).name == "x" * 40


def test_image_cap_is_the_setting() -> None:
    small = Settings(max_image=len(PNG) - 1)
    refused(RequestRoom, {"name": "Ann", "userImage": PNG}, small)


# -- offer / answer --------------------------------------------------------------------


def test_offer_seed_payload() -> None:
    raw = {"offer": OFFER, "roomId": "r1", "name": "Ann", "remoteSocketId": "s2"}
    parsed = CallOffer.parse(raw, S)
    assert parsed.offer == SessionDescription("offer", "v=0\r\n")
    assert (parsed.room_id, parsed.target, parsed.name) == ("r1", "s2", "Ann")


def test_offer_targets_optional() -> None:
    parsed = CallOffer.parse({"offer": OFFER}, S)
    assert (parsed.room_id, parsed.target) == (None, None)


def test_answer_seed_payload() -> None:
    raw = {"ans": ANSWER, "roomId": "r1", "name": "Bob", "remoteSocketId": "s1"}
    parsed = CallAnswer.parse(raw, S)
    assert parsed.ans.to_json() == ANSWER
    assert CallAnswer.parse({"ans": {"type": "pranswer", "sdp": ""}}, S).ans.type == "pranswer"


@pytest.mark.parametrize("raw", [
    None, {}, {"offer": None}, {"offer": "v=0"}, {"offer": {"type": "answer", "sdp": ""}},
    {"offer": {"type": "offer"}}, {"offer": {"type": "offer", "sdp": 1}},
    {"offer": {"type": "offer", "sdp": "x" * 20_001}},
    {"offer": OFFER, "remoteSocketId": 1}, {"offer": OFFER, "roomId": ["r"]},
    {"offer": OFFER, "name": "x" * 41},
])
def test_offer_refused(raw: object) -> None:
    refused(CallOffer, raw)


@pytest.mark.parametrize("raw", [
    {"ans": OFFER}, {"offer": ANSWER}, {"ans": {"type": "rollback", "sdp": ""}},
])
def test_answer_refused(raw: object) -> None:
    refused(CallAnswer, raw)


def test_sdp_cap_is_the_setting() -> None:
    small = Settings(max_sdp=4)
    assert CallOffer.parse({"offer": {"type": "offer", "sdp": "abcd"}}, small)
    refused(CallOffer, {"offer": {"type": "offer", "sdp": "abcde"}}, small)


# -- ICE -------------------------------------------------------------------------------


def test_candidate_seed_payload() -> None:
    parsed = SendIceCandidates.parse({"to": "s2", "candidate": CANDIDATE}, S)
    assert parsed.target == "s2"
    assert parsed.candidate is not None
    assert parsed.candidate.to_json() == CANDIDATE


def test_null_candidate_is_end_of_candidates() -> None:
    parsed = SendIceCandidates.parse({"to": "s2", "candidate": None}, S)
    assert parsed.candidate is None
    assert SendIceCandidates.parse({"candidate": None}, S).target is None


def test_candidate_members_default_to_null() -> None:
    parsed = IceCandidate.parse({"candidate": "candidate:1"}, S)
    assert parsed.to_json() == {"candidate": "candidate:1", "sdpMid": None,
                                "sdpMLineIndex": None, "usernameFragment": None}


@pytest.mark.parametrize("raw", [
    None, {}, {"to": "s2"}, {"candidate": "candidate:1"}, {"candidate": {"candidate": 1}},
    {"candidate": {"candidate": "c", "sdpMLineIndex": -1}},
    {"candidate": {"candidate": "c", "sdpMLineIndex": True}},
    {"candidate": {"candidate": "c", "sdpMLineIndex": "0"}},
    {"candidate": {"candidate": "c", "sdpMid": 0}},
    {"candidate": {"candidate": "c" * 2_001}},
    {"candidate": {"candidate": "c" * 1_000, "usernameFragment": "u" * 1_000}},
    {"candidate": CANDIDATE, "to": 3},
])
def test_candidate_refused(raw: object) -> None:
    refused(SendIceCandidates, raw)


# -- stop-call, newMessage -------------------------------------------------------------


def test_stop_call_payloads() -> None:
    parsed = StopCall.parse({"roomId": "r1", "remoteSocketId": "s2", "name": "Ann"}, S)
    assert (parsed.room_id, parsed.target) == ("r1", "s2")
    assert StopCall.parse(None, S) == StopCall()
    assert StopCall.parse({}, S) == StopCall()
    refused(StopCall, "stop")
    refused(StopCall, {"roomId": 1})


def test_new_message_payloads() -> None:
    parsed = NewMessage.parse({"message": "hi", "roomId": "r1", "remoteSocket": "s2"}, S)
    assert (parsed.message, parsed.room_id, parsed.target) == ("hi", "r1", "s2")
    assert NewMessage.parse({"message": "x" * 1_000}, S).message == "x" * 1_000


@pytest.mark.parametrize("raw", [
    None, {}, {"message": None}, {"message": ""}, {"message": " \n "}, {"message": 5},
    {"message": "x" * 1_001}, {"message": "hi", "remoteSocket": {}},
])
def test_new_message_refused(raw: object) -> None:
    refused(NewMessage, raw)


def test_parse_dispatches_by_event() -> None:
    assert isinstance(events.parse("stop-call", None, S), StopCall)
    assert set(events.INBOUND) == {
        "request-room", "negotiation-call-offer", "negotiation-call-answer",
        "send-new-ice-candidates", "stop-call", "newMessage", "get-ice-servers"}


@pytest.mark.parametrize("raw", [b"\x00", 1.5, True, ["name"], {"name": b"Ann"}])
def test_binary_and_odd_types_refused(raw: object) -> None:
    refused(RequestRoom, raw)


# -- outgoing ---------------------------------------------------------------------------


def test_match_done_shape() -> None:
    assert events.match_done(room_id="r1", partner_sid="s2", partner_name="Bob",
                             partner_image=PNG, initiator=True) == {
        "roomId": "r1",
        "remoteUserDetails": {"socket": "s2", "userName": "Bob", "userImage": PNG},
        "initiator": True,
    }


def test_relayed_shapes() -> None:
    offer = SessionDescription("offer", "v=0")
    ans = SessionDescription("answer", "v=0")
    assert events.offer_relayed(room_id="r", sender_sid="s1", sender_name="Ann",
                                offer=offer) == {
        "remoteUserDetails": {"socket": "s1", "userName": "Ann"}, "roomId": "r",
        "offer": {"type": "offer", "sdp": "v=0"}}
    assert events.answer_relayed(room_id="r", sender_sid="s2", sender_name="Bob",
                                 ans=ans) == {
        "ans": {"type": "answer", "sdp": "v=0"}, "roomId": "r", "name": "Bob",
        "remoteSocketId": "s2"}
    assert events.candidate_relayed(None) == {"candidate": None}
    assert events.message_relayed(sender_sid="s1", message="hi") == {"from": "s1",
                                                                      "message": "hi"}


def test_error_shapes() -> None:
    error = PayloadError("name is required")
    assert error_event(error, "request-room") == {
        "code": "invalid-payload", "message": "name is required", "event": "request-room"}
    assert error_ack(error) == {"ok": False, "error": {"code": "invalid-payload",
                                                        "message": "name is required"}}
    assert ok_ack() == {"ok": True}


@given(st.text(max_size=300), st.none() | st.text(max_size=20),
       st.none() | st.integers(min_value=0, max_value=65535), st.none() | st.text(max_size=20))
def test_candidate_size_is_its_json_length(text: str, mid: str | None, index: int | None,
                                          ufrag: str | None) -> None:
    # The size check skips encoding for plain strings: it must still be exact.
    candidate = events.IceCandidate(text, mid, index, ufrag)
    assert candidate._json_size() == len(json.dumps(candidate.to_json()))


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300),
       st.none() | st.integers(min_value=0, max_value=65535))
def test_candidate_size_of_plain_ascii(text: str, index: int | None) -> None:
    candidate = events.IceCandidate(text, "0", index, "abcd")
    assert candidate._json_size() == len(json.dumps(candidate.to_json()))


# -- every input has a defined outcome ---------------------------------------------------

# JSON as a client can send it: any scalar, text with any code point (lone surrogates
# too: JSON's "\ud800" decodes to one), big integers, nested arrays and objects, and
# bytes (a binary attachment can stand anywhere in a BINARY_EVENT's data).
_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-70000, 70000)
            | st.floats() | st.text(st.characters(exclude_categories=()), max_size=50)
            | st.sampled_from(["offer", "answer", "pranswer", "", " ", "Ann", PNG])
            | st.binary(max_size=20))
ANY_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12) | st.sampled_from(
        ["type", "sdp", "candidate", "name", "_placeholder"]), inner, max_size=4),
    max_leaves=12,
)

VALID = {
    events.REQUEST_ROOM: {"name": "Ann", "roomId": None, "userImage": PNG},
    events.CALL_OFFER: {"offer": OFFER, "roomId": "r", "remoteSocketId": "s", "name": "A"},
    events.CALL_ANSWER: {"ans": ANSWER, "roomId": "r", "remoteSocketId": "s", "name": "A"},
    events.SEND_ICE_CANDIDATES: {"to": "s", "candidate": CANDIDATE},
    events.STOP_CALL: {"roomId": "r", "remoteSocketId": "s", "name": "A"},
    events.NEW_MESSAGE: {"message": "hi", "roomId": "r", "remoteSocket": "s"},
    events.GET_ICE_SERVERS: {},  # no fields: only the whole payload can be wrong
}
"""A valid payload of every inbound event, every documented field present."""


def _paths(value: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path in ``value``, objects inside objects included."""
    out: list[tuple[str, ...]] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            out.append((*prefix, key))
            out.extend(_paths(inner, (*prefix, key)))
    return out


FIELDS = [(event, path) for event, payload in VALID.items() for path in _paths(payload)]


def _replaced(payload: Any, path: tuple[str, ...], value: object) -> Any:
    out = dict(payload)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = _replaced(out[path[0]], path[1:], value)
    return out


def test_every_inbound_event_and_field_is_covered() -> None:
    assert set(VALID) == set(events.INBOUND)
    for event, payload in VALID.items():
        assert isinstance(events.parse(event, payload, S), events.INBOUND[event])
    assert (events.CALL_OFFER, ("offer", "type")) in FIELDS


def _outcome(event: str, raw: object) -> None:
    """``events.parse`` returns its event's payload or raises PayloadError, nothing else."""
    try:
        parsed = events.parse(event, raw, S)
    except PayloadError as error:
        assert error.code is ErrorCode.INVALID_PAYLOAD and error.message
    else:
        assert isinstance(parsed, events.INBOUND[event])


@given(st.sampled_from(sorted(events.INBOUND)), ANY_JSON)
def test_any_value_as_the_whole_payload(event: str, raw: object) -> None:
    _outcome(event, raw)


ABSENT_FIELD = object()
"""Stands for a field left out."""


@given(st.sampled_from(FIELDS), ANY_JSON | st.just(ABSENT_FIELD))
def test_any_value_in_any_field(field: tuple[str, tuple[str, ...]], value: object) -> None:
    event, path = field
    payload = _replaced(VALID[event], path, value)
    if value is ABSENT_FIELD:
        parent = payload
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
    _outcome(event, payload)


@pytest.mark.parametrize("event, raw", [
    (events.CALL_OFFER, {"offer": {"type": {}, "sdp": ""}}),
    (events.CALL_ANSWER, {"ans": {"type": {}, "sdp": ""}}),
    (events.CALL_OFFER, {"offer": {"type": ["offer"], "sdp": ""}}),
])
def test_an_unhashable_description_type_is_invalid_payload(event: str, raw: object) -> None:
    with pytest.raises(PayloadError, match=r"type must be one of"):
        events.parse(event, raw, S)


@pytest.mark.parametrize("name", [
    "A\u202en",  # RIGHT-TO-LEFT OVERRIDE (Cf)
    "A\u200bn",  # ZERO WIDTH SPACE (Cf)
    "A\ufeffn",  # ZERO WIDTH NO-BREAK SPACE (Cf)
    "A\ud800n",  # a lone surrogate (Cs)
    "A\u2028n",  # LINE SEPARATOR (Zl)
    "A\u2029n",  # PARAGRAPH SEPARATOR (Zp)
    "A\x85n",  # NEXT LINE (Cc, outside ASCII)
    "A\x00n", "A\x1bn", "A\x7fn",  # ASCII controls (Cc)
])
def test_names_refuse_control_format_surrogate_and_separators(name: str) -> None:
    message = refused(RequestRoom, {"name": name})
    assert "control, format or separator" in message


@pytest.mark.parametrize("name", ["Zoë", "李小龍", "Ann Lee", "Ω", "😀", "A\u00a0n"])
def test_names_keep_letters_symbols_and_spaces(name: str) -> None:
    assert RequestRoom.parse({"name": name}, S).name == name
