"""Socket.IO v5 codec: the shared vectors both ways, the rules one by one, and properties."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liveloop.wire import engineio as eio
from liveloop.wire import socketio as sio
from liveloop.wire.errors import ProtocolError

from .vectors import ids, load

_VECTORS = load("socketio")
VECTORS, VALID, INVALID, CANONICAL = (
    _VECTORS.all, _VECTORS.valid, _VECTORS.invalid, _VECTORS.canonical)
DEFAULT_MAX_ATTACHMENTS = 10
T = sio.PacketType


def _value(meaning: Any) -> Any:
    """Vector data to Python data: ``{"base64": ...}`` is ``bytes``."""
    if isinstance(meaning, dict):
        if list(meaning) == ["base64"]:
            return base64.b64decode(meaning["base64"], validate=True)
        return {k: _value(v) for k, v in meaning.items()}
    if isinstance(meaning, list):
        return [_value(v) for v in meaning]
    return meaning


def _packet(meaning: dict[str, Any]) -> sio.Packet:
    data = _value(meaning["data"]) if "data" in meaning else sio.ABSENT
    kind = sio.PacketType[meaning["type"]]
    return sio.Packet(kind, meaning["namespace"], data, meaning.get("id"))


def _frames(vector: dict[str, Any]) -> list[str | bytes]:
    encoded = vector["encoded"]
    parts = encoded if isinstance(encoded, list) else [encoded]
    return [p if isinstance(p, str) else _value(p) for p in parts]


def _decoder(vector: dict[str, Any]) -> sio.Decoder:
    options = vector.get("options", {})
    return sio.Decoder(max_attachments=options.get("max_attachments", DEFAULT_MAX_ATTACHMENTS))


def _feed(decoder: sio.Decoder, frame: str | bytes) -> sio.Packet | None:
    if isinstance(frame, bytes):
        return decoder.feed_binary(frame)
    return decoder.feed_text(frame)




# --- the vector file itself -----------------------------------------------------------------

def test_vector_names_are_unique() -> None:
    names = ids(VECTORS)
    assert len(names) == len(set(names))


def test_vectors_have_the_documented_shape() -> None:
    for v in VECTORS:
        assert ("decoded" in v) != bool(v.get("error")), v["name"]
        assert set(v.get("options", {})) <= {"max_attachments"}, v["name"]
        if "decoded" in v:
            assert set(v["decoded"]) <= {"type", "namespace", "id", "data"}, v["name"]


def test_vectors_cover_every_packet_type_both_ways() -> None:
    every = {t.name for t in T}
    assert {v["decoded"]["type"] for v in CANONICAL} == every
    first_frames = [_frames(v)[0] for v in INVALID]
    assert {f[0] for f in first_frames if isinstance(f, str) and f} >= {str(t.value) for t in T}


# --- the vectors, both ways -----------------------------------------------------------------

@pytest.mark.parametrize("vector", VALID, ids=ids(VALID))
def test_vector_decodes_to_its_meaning(vector: dict[str, Any]) -> None:
    decoder = _decoder(vector)
    *head, last = _frames(vector)
    for frame in head:
        assert _feed(decoder, frame) is None
        assert decoder.waiting_for_attachments
    assert _feed(decoder, last) == _packet(vector["decoded"])
    assert not decoder.waiting_for_attachments


@pytest.mark.parametrize("vector", CANONICAL, ids=ids(CANONICAL))
def test_meaning_encodes_to_the_vector(vector: dict[str, Any]) -> None:
    packet = _packet(vector["decoded"])
    assert sio.encode(packet) == _frames(vector)
    if packet.type in (T.CONNECT, T.DISCONNECT, T.CONNECT_ERROR):
        assert sio.encode_control(packet) == vector["encoded"]


@pytest.mark.parametrize("vector", INVALID, ids=ids(INVALID))
def test_invalid_vector_is_rejected(vector: dict[str, Any]) -> None:
    decoder = _decoder(vector)
    *head, last = _frames(vector)
    for frame in head:  # every frame but the last is accepted
        _feed(decoder, frame)
    with pytest.raises(ProtocolError):
        _feed(decoder, last)


# --- rules, one by one ----------------------------------------------------------------------

def test_main_namespace_is_never_written() -> None:
    assert sio.encode(sio.Packet(T.CONNECT)) == ["0"]
    assert sio.encode(sio.Packet(T.CONNECT, "/admin")) == ["0/admin,"]


def test_absent_data_differs_from_null() -> None:
    assert sio.encode(sio.Packet(T.CONNECT, "/", None)) == ["0null"]
    assert sio.Decoder().feed_text("0") == sio.Packet(T.CONNECT, "/", sio.ABSENT)


def test_bytes_make_an_event_binary() -> None:
    text, attachment = sio.encode(sio.Packet(T.EVENT, "/", ["a", b"\x01"]))
    assert text == '51-["a",{"_placeholder":true,"num":0}]'
    assert attachment == b"\x01"


def test_bytes_make_an_ack_binary() -> None:
    assert sio.encode(sio.Packet(T.ACK, "/", [b"\x01"], 3))[0] == \
        '61-3[{"_placeholder":true,"num":0}]'


def test_binary_type_without_bytes_is_written_plain() -> None:
    assert sio.encode(sio.Packet(T.BINARY_EVENT, "/", ["a"])) == ['2["a"]']
    assert sio.encode(sio.Packet(T.BINARY_ACK, "/", [], 1)) == ["31[]"]


def test_bytearray_memoryview_and_tuples_are_encoded() -> None:
    frames = sio.encode(sio.Packet(T.EVENT, "/", ("a", bytearray(b"x"), memoryview(b"y"))))
    assert frames == ['52-["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]',
                      b"x", b"y"]
    assert all(type(f) is bytes for f in frames[1:])


def test_encode_event() -> None:
    assert sio.encode_event("/", "hey", ("Jude",)) == ['2["hey","Jude"]']
    assert sio.encode_event("/admin", "up", [b"\x00"], ack_id=4) == \
        ['51-/admin,4["up",{"_placeholder":true,"num":0}]', b"\x00"]


@pytest.mark.parametrize("namespace", ["/", "/admin"])
@pytest.mark.parametrize("args", [(), ({"ok": True},), ("a", 1, None), (b"\x01", {"k": b"\x02"})])
def test_encode_ack_agrees_with_the_general_encoder(namespace: str, args: tuple[Any, ...]
                                                     ) -> None:
    assert sio.encode_ack(namespace, args, 7) == sio.encode(
        sio.Packet(T.ACK, namespace, list(args), 7))


def test_encoding_keeps_non_ascii_and_escapes_lone_surrogates() -> None:
    assert sio.encode_event("/", "é😀", []) == ['2["é😀"]']
    (text,) = sio.encode_event("/", "a", ["\ud800", "x\udfffy"])
    assert text == '2["a","\\ud800","x\\udfffy"]'
    text.encode("utf-8")  # sendable
    assert sio.Decoder().feed_text(text) == sio.Packet(T.EVENT, "/", ["a", "\ud800", "x\udfffy"])


def test_decoded_lone_surrogate_can_be_sent_again() -> None:
    packet = sio.Decoder().feed_text('2["a","\\udc00"]')
    assert packet is not None
    (text,) = sio.encode(packet)
    assert isinstance(text, str)
    assert text.encode("utf-8") == b'2["a","\\udc00"]'


def test_encoding_refuses_nan_rather_than_writing_non_json() -> None:
    with pytest.raises(ValueError, match="JSON"):
        sio.encode_event("/", "a", [float("nan")])


def test_number_out_of_double_range_is_rejected() -> None:
    with pytest.raises(ProtocolError):
        sio.Decoder().feed_text('2["a",1e400]')


def test_large_integers_are_kept_exactly() -> None:
    packet = sio.Decoder().feed_text('2["a",123456789012345678901234567890]')
    assert packet is not None and packet.data[1] == 123456789012345678901234567890


def test_ack_id_is_a_safe_integer() -> None:
    assert sio.Decoder().feed_text('29007199254740992["a"]') is not None  # 2**53
    with pytest.raises(ProtocolError):
        sio.Decoder().feed_text('29007199254740993["a"]')
    with pytest.raises(ProtocolError):
        sio.Decoder().feed_text("2" + "1" * 17 + '["a"]')


def test_namespace_length_is_bounded() -> None:
    assert sio.Decoder().feed_text("0/" + "n" * 255 + ",") is not None
    with pytest.raises(ProtocolError):
        sio.Decoder().feed_text("0/" + "n" * 256 + ",")


def test_nesting_depth_is_bounded() -> None:
    ok = '2["a",' + "[" * 99 + "]" * 99 + "]"
    assert sio.Decoder().feed_text(ok) is not None
    with pytest.raises(ProtocolError):
        sio.Decoder().feed_text('2["a",' + "[" * 100 + "]" * 100 + "]")
    with pytest.raises(ProtocolError):
        sio.Decoder().feed_text('2["a",' + '{"k":' * 100 + "1" + "}" * 100 + "]")


@pytest.mark.parametrize("depth", [150, 990])
def test_deep_binary_packet_is_rejected_before_reassembly(depth: int) -> None:
    # reassembly recurses: data nested near the recursion limit must never reach it
    deep = "[" * depth + "]" * depth
    decoder = sio.Decoder()
    with pytest.raises(ProtocolError):
        decoder.feed_text('51-["a",' + deep + ',{"_placeholder":true,"num":0}]')
    with pytest.raises(ProtocolError):
        decoder.feed_binary(b"x")  # and no packet is pending


def test_huge_attachment_count_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        sio.Decoder(max_attachments=10**9).feed_text("5" + "9" * 5000 + '-["a"]')


def test_attachment_cap_is_configurable() -> None:
    text = '52-["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
    assert sio.Decoder(max_attachments=2).feed_text(text) is None
    with pytest.raises(ProtocolError):
        sio.Decoder(max_attachments=1).feed_text(text)


def test_decoder_is_reusable_after_a_binary_packet() -> None:
    decoder = sio.Decoder()
    assert decoder.feed_text('51-["a",{"_placeholder":true,"num":0}]') is None
    assert decoder.waiting_for_attachments
    assert decoder.feed_binary(b"1") == sio.Packet(T.BINARY_EVENT, "/", ["a", b"1"])
    assert not decoder.waiting_for_attachments
    assert decoder.feed_text('2["b"]') == sio.Packet(T.EVENT, "/", ["b"])
    assert decoder.feed_text('61-2[{"_placeholder":true,"num":0}]') is None
    assert decoder.feed_binary(b"2") == sio.Packet(T.BINARY_ACK, "/", [b"2"], 2)


def test_reassembled_attachments_are_the_bytes_fed() -> None:
    decoder = sio.Decoder()
    decoder.feed_text('51-["a",{"_placeholder":true,"num":0}]')
    packet = decoder.feed_binary(b"\x00" * 3)
    assert packet is not None and packet.data[1] == b"\x00\x00\x00"


def test_reserved_event_names_are_rejected_only_as_event_names() -> None:
    with pytest.raises(ProtocolError):
        sio.Decoder().feed_text('2["disconnecting"]')
    assert sio.Decoder().feed_text('2["chat","disconnect"]') is not None
    assert sio.Decoder().feed_text('2["Connect"]') is not None


# --- properties -----------------------------------------------------------------------------

_keys = st.text(max_size=8).filter(lambda k: k != "_placeholder")
_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
_data = st.recursive(
    st.one_of(_json_scalars, st.binary(max_size=16)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=20,
)
_event_names = st.text(min_size=0, max_size=12).filter(
    lambda s: s not in {"connect", "connect_error", "disconnect", "disconnecting",
                        "newListener", "removeListener"})
_namespaces = st.one_of(
    st.just("/"), st.text(max_size=20).filter(lambda s: "," not in s).map(lambda s: "/" + s))
_ack_ids = st.one_of(st.none(), st.integers(0, 2**53))


def _count_bytes(data: Any) -> int:
    if isinstance(data, bytes):
        return 1
    if isinstance(data, list):
        return sum(_count_bytes(v) for v in data)
    if isinstance(data, dict):
        return sum(_count_bytes(v) for v in data.values())
    return 0


def _decode_all(frames: list[str | bytes], max_attachments: int) -> sio.Packet:
    decoder = sio.Decoder(max_attachments=max_attachments)
    results = [_feed(decoder, f) for f in frames]
    assert results[:-1] == [None] * (len(frames) - 1)
    assert results[-1] is not None
    return results[-1]


@given(st.booleans(), _namespaces, _event_names, st.lists(_data, max_size=4), _ack_ids)
def test_event_and_ack_round_trip(is_ack: bool, namespace: str, name: str, args: list[Any],
                                  ack_id: int | None) -> None:
    if is_ack:
        packet = sio.Packet(T.ACK, namespace, args, ack_id if ack_id is not None else 0)
    else:
        packet = sio.Packet(T.EVENT, namespace, [name, *args], ack_id)
    frames = sio.encode(packet)
    attachments = _count_bytes(packet.data)
    assert len(frames) == 1 + attachments
    decoded = _decode_all(frames, max_attachments=attachments)
    assert (decoded.namespace, decoded.data, decoded.id) == \
        (packet.namespace, packet.data, packet.id)
    binary = T.BINARY_ACK if is_ack else T.BINARY_EVENT
    assert decoded.type is (binary if attachments else packet.type)


@given(_namespaces, st.one_of(st.just(sio.ABSENT), st.dictionaries(_keys, _json_scalars)))
def test_connect_round_trip(namespace: str, data: Any) -> None:
    packet = sio.Packet(T.CONNECT, namespace, data)
    assert _decode_all([sio.encode_control(packet)], 0) == packet


@given(_namespaces.filter(lambda s: eio.SEPARATOR not in s), _event_names,
       st.lists(_data, max_size=4), _ack_ids)
def test_round_trip_through_a_polling_payload(namespace: str, name: str, args: list[Any],
                                              ack_id: int | None) -> None:
    # JSON escapes U+001E, so only a namespace could hold the payload separator
    packet = sio.Packet(T.EVENT, namespace, [name, *args], ack_id)
    frames = sio.encode(packet)
    body = eio.encode_payload(eio.Packet(eio.PacketType.MESSAGE, f) for f in frames)
    messages = eio.decode_payload(body, max_size=len(body), max_packets=len(frames))
    decoded = _decode_all([m.data for m in messages], max_attachments=len(frames))
    assert decoded.data == packet.data


_prefixes = st.sampled_from(
    ["", "0", "1", "2", "3", "4", "5", "6", "51-", "52-", "61-", "60-", "51-/a,", "2/a,", "21",
     "3/a,7", "5-", "5" + "9" * 20 + "-", "5" + "9" * 5000 + "-", "2/" + "x" * 300 + ","])
_json_texts = st.one_of(
    st.text(max_size=30),
    _data.map(lambda d: json.dumps(d, default=lambda b: {"_placeholder": True, "num": len(b)})),
    st.lists(st.sampled_from(["[", "]", "{", "}", '"a"', ",", ":", "1", '{"_placeholder":true',
                              ',"num":0}', "null", "NaN", "-", "e9999"]),
             max_size=30).map("".join),
)
_frames_st = st.lists(
    st.one_of(st.builds(lambda p, j: p + j, _prefixes, _json_texts), st.text(), st.binary()),
    min_size=1, max_size=5)


@given(_frames_st, st.integers(0, 4))
def test_decoder_raises_only_protocol_error(frames: list[str | bytes],
                                            max_attachments: int) -> None:
    decoder = sio.Decoder(max_attachments=max_attachments)
    with contextlib.suppress(ProtocolError):
        for frame in frames:
            packet = _feed(decoder, frame)
            if packet is not None:
                sio.encode(packet)  # whatever decodes can be sent on


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(_JSON, st.booleans(), st.booleans())
def test_the_compact_encoder_writes_what_json_dumps_writes(
        data: Any, ensure_ascii: bool, allow_nan: bool) -> None:
    """The encoder made once (fastjson) for every packet and every notice across nodes:
    the same text as ``json.dumps`` with the same options, and the same refusals."""
    from liveloop.wire.fastjson import compact_encoder

    encode = compact_encoder(ensure_ascii=ensure_ascii, allow_nan=allow_nan)
    try:
        expected = json.dumps(data, separators=(",", ":"), ensure_ascii=ensure_ascii,
                              allow_nan=allow_nan)
    except ValueError:
        with pytest.raises(ValueError):
            encode(data)
        return
    assert encode(data) == expected


def test_the_compact_encoder_refuses_what_is_not_json() -> None:
    from liveloop.wire.fastjson import compact_encoder

    encode = compact_encoder(ensure_ascii=False)
    for value in (b"x", {1j: 1}, object(), [{"a": {1, 2}}]):
        with pytest.raises(TypeError):
            encode(value)
