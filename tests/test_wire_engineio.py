"""Engine.IO v4 codec: the shared vectors both ways, the rules one by one, and properties."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liveloop.wire import engineio as eio
from liveloop.wire.errors import ProtocolError

from .vectors import ids, load

_VECTORS = load("engineio")
VECTORS, VALID, INVALID, CANONICAL = (
    _VECTORS.all, _VECTORS.valid, _VECTORS.invalid, _VECTORS.canonical)
DEFAULTS = {"max_size": 1_000_000, "max_packets": 256}
BIG = 1_000_000


def _options(vector: dict[str, Any]) -> dict[str, int]:
    return {**DEFAULTS, **vector.get("options", {})}


def _frame(encoded: str | dict[str, str]) -> str | bytes:
    """A vector's ``encoded`` as a frame: ``{"base64": ...}`` is a binary frame."""
    if isinstance(encoded, dict):
        return base64.b64decode(encoded["base64"], validate=True)
    return encoded


def _packet(meaning: dict[str, Any]) -> eio.Packet:
    data = meaning.get("data", "")
    if isinstance(data, dict):
        data = base64.b64decode(data["base64"], validate=True)
    return eio.Packet(eio.PacketType[meaning["type"].upper()], data)


def _decode(vector: dict[str, Any]) -> eio.Packet | list[eio.Packet]:
    opts = _options(vector)
    encoded = vector["encoded"]
    if vector["kind"] == "payload":
        return eio.decode_payload(encoded, max_size=opts["max_size"],
                                  max_packets=opts["max_packets"])
    frame = _frame(encoded)
    if isinstance(frame, bytes):
        return eio.decode_binary(frame, max_size=opts["max_size"])
    return eio.decode_text(frame, max_size=opts["max_size"])




# --- the vector file itself -----------------------------------------------------------------

def test_vector_names_are_unique() -> None:
    names = ids(VECTORS)
    assert len(names) == len(set(names))


def test_vectors_have_the_documented_shape() -> None:
    for v in VECTORS:
        assert v["kind"] in ("packet", "payload"), v["name"]
        assert "encoded" in v
        assert ("decoded" in v) != bool(v.get("error")), v["name"]
        assert set(v.get("options", {})) <= set(DEFAULTS), v["name"]


def test_vectors_cover_every_packet_type_both_ways() -> None:
    packet_types = {v["decoded"]["type"] for v in CANONICAL if v["kind"] == "packet"}
    payload_types = {p["type"] for v in CANONICAL if v["kind"] == "payload" for p in v["decoded"]}
    every = {t.name.lower() for t in eio.PacketType}
    assert packet_types == every
    assert payload_types >= every - {"upgrade"}  # upgrade is only ever sent over WebSocket


# --- the vectors, both ways -----------------------------------------------------------------

@pytest.mark.parametrize("vector", VALID, ids=ids(VALID))
def test_vector_decodes_to_its_meaning(vector: dict[str, Any]) -> None:
    if vector["kind"] == "payload":
        expected: Any = [_packet(p) for p in vector["decoded"]]
    else:
        expected = _packet(vector["decoded"])
    assert _decode(vector) == expected


@pytest.mark.parametrize("vector", CANONICAL, ids=ids(CANONICAL))
def test_meaning_encodes_to_the_vector(vector: dict[str, Any]) -> None:
    if vector["kind"] == "payload":
        packets = [_packet(p) for p in vector["decoded"]]
        assert eio.encode_payload(packets) == vector["encoded"]
        records = vector["encoded"].split(eio.SEPARATOR)
        assert [eio.encode_payload_record(p) for p in packets] == records
    else:
        assert eio.encode_text(_packet(vector["decoded"])) == _frame(vector["encoded"])


@pytest.mark.parametrize("vector", INVALID, ids=ids(INVALID))
def test_invalid_vector_is_rejected(vector: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        _decode(vector)


# --- rules, one by one ----------------------------------------------------------------------

def test_packet_type_is_the_first_character() -> None:
    assert eio.decode_text("4", max_size=BIG) == eio.Packet(eio.PacketType.MESSAGE, "")
    assert eio.decode_text("44", max_size=BIG) == eio.Packet(eio.PacketType.MESSAGE, "4")


def test_text_message_is_not_binary() -> None:
    packet = eio.decode_text("4hello", max_size=BIG)
    assert not packet.binary
    assert eio.encode_text(packet) == "4hello"


def test_binary_frame_is_a_binary_message_without_type_byte() -> None:
    packet = eio.decode_binary(b"\x04\x01", max_size=BIG)
    assert packet == eio.Packet(eio.PacketType.MESSAGE, b"\x04\x01")
    assert packet.binary
    assert eio.encode_text(packet) == b"\x04\x01"


def test_binary_in_a_payload_is_b_and_base64() -> None:
    packet = eio.Packet(eio.PacketType.MESSAGE, b"\x01\x02\x03")
    assert eio.encode_payload_record(packet) == "bAQID"
    assert eio.decode_payload("bAQID", max_size=BIG, max_packets=1) == [packet]


def test_payload_is_taken_whole_or_not_at_all() -> None:
    with pytest.raises(ProtocolError):
        eio.decode_payload("4a\x1e4b\x1e", max_size=BIG, max_packets=10)


def test_max_size_counts_characters_not_bytes() -> None:
    assert eio.decode_text("4€€", max_size=3).data == "€€"  # 7 bytes of UTF-8
    with pytest.raises(ProtocolError):
        eio.decode_payload("4€\x1e4€", max_size=4, max_packets=2)


def test_max_packets_bounds_the_separators() -> None:
    body = eio.SEPARATOR.join(["3"] * 5)
    assert len(eio.decode_payload(body, max_size=BIG, max_packets=5)) == 5
    with pytest.raises(ProtocolError):
        eio.decode_payload(body, max_size=BIG, max_packets=4)


def test_protocol_error_has_a_bounded_reason() -> None:
    with pytest.raises(ProtocolError) as info:
        eio.decode_text("x" * 10_000, max_size=BIG)
    assert len(info.value.reason) < 100
    assert isinstance(info.value, ValueError)


def test_open_packet_carries_the_handshake() -> None:
    packet = eio.open_packet("abc", upgrades=["websocket"], ping_interval_ms=25000,
                             ping_timeout_ms=20000, max_payload=1_000_000)
    assert packet.type is eio.PacketType.OPEN
    assert json.loads(str(packet.data)) == {
        "sid": "abc", "upgrades": ["websocket"], "pingInterval": 25000,
        "pingTimeout": 20000, "maxPayload": 1_000_000,
    }
    assert eio.encode_text(packet) == "0" + str(packet.data)


def test_premade_packets() -> None:
    assert [eio.encode_text(p) for p in (eio.PING, eio.PONG, eio.NOOP, eio.CLOSE)] == \
        ["2", "3", "6", "1"]
    assert eio.encode_text(eio.PROBE_PONG) == "3probe"


def test_encode_payload_of_one_packet_has_no_separator() -> None:
    assert eio.encode_payload([eio.PING]) == "2"


# --- properties -----------------------------------------------------------------------------

_text_packets = st.builds(
    eio.Packet,
    st.sampled_from(list(eio.PacketType)),
    st.text().filter(lambda s: eio.SEPARATOR not in s),
)
_binary_packets = st.builds(eio.Packet, st.just(eio.PacketType.MESSAGE), st.binary())
_packets = st.one_of(_text_packets, _binary_packets)


@given(st.lists(_packets, min_size=1, max_size=20))
def test_payload_round_trip(packets: list[eio.Packet]) -> None:
    body = eio.encode_payload(packets)
    assert eio.decode_payload(body, max_size=len(body), max_packets=len(packets)) == packets


@given(_packets)
def test_frame_round_trip(packet: eio.Packet) -> None:
    frame = eio.encode_text(packet)
    if isinstance(frame, bytes):
        assert eio.decode_binary(frame, max_size=len(frame)) == packet
    else:
        assert eio.decode_text(frame, max_size=len(frame)) == packet


_records = st.one_of(
    st.text(max_size=20),
    st.builds(lambda s: "b" + s, st.text(alphabet="AQIDBA=+/-_ b\n\x1e€", max_size=12)),
    st.builds(lambda d, s: d + s, st.sampled_from("0123456789b"), st.text(max_size=8)),
)


@given(st.one_of(st.text(), st.lists(_records, max_size=6).map(eio.SEPARATOR.join)),
       st.integers(0, 64), st.integers(1, 8))
def test_text_decoders_raise_only_protocol_error(body: str, max_size: int,
                                                 max_packets: int) -> None:
    for decode in (
        lambda: eio.decode_payload(body, max_size=max_size, max_packets=max_packets),
        lambda: eio.decode_text(body, max_size=max_size),
    ):
        with contextlib.suppress(ProtocolError):
            decode()


@given(st.binary(), st.integers(0, 64))
def test_binary_decoder_raises_only_protocol_error(frame: bytes, max_size: int) -> None:
    try:
        packet = eio.decode_binary(frame, max_size=max_size)
    except ProtocolError:
        assert len(frame) > max_size
    else:
        assert packet.data == frame
