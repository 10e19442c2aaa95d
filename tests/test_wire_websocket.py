"""WebSocket framing (liveloop.wire.websocket): every rule of RFC 6455 section 5 that a
server enforces, one test each, with wsproto as the independent client on the other side."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.frame_protocol import FrameProtocol, Opcode

from liveloop.wire import websocket as ws

MAX = 1000
MASK = b"\x01\x02\x03\x04"


def client_frames(*events: TextMessage | BytesMessage | Ping | CloseConnection) -> bytes:
    proto = FrameProtocol(client=True, extensions=[])
    out = b""
    for event in events:
        if isinstance(event, TextMessage):
            out += proto.send_data(event.data, event.message_finished)
        elif isinstance(event, BytesMessage):
            out += proto.send_data(bytes(event.data), event.message_finished)
        elif isinstance(event, Ping):
            out += proto.ping(event.payload)
        elif isinstance(event, CloseConnection):
            out += proto.close(event.code, event.reason)
    return out


def raw(first: int, payload: bytes, *, masked: bool = True, length: int | None = None
        ) -> bytes:
    """A frame built by hand, for what no well-behaved client would send."""
    size = len(payload) if length is None else length
    if size < 126:
        head = bytes((first, (0x80 if masked else 0) | size))
    elif size < 65536:
        head = struct.pack("!BBH", first, (0x80 if masked else 0) | 126, size)
    else:
        head = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, size)
    if not masked:
        return head + payload
    body = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + MASK + body


def decode_all(data: bytes, max_message: int = MAX) -> list[ws.Event]:
    return ws.FrameDecoder(max_message).feed(data)


def error_code(data: bytes, max_message: int = MAX) -> int:
    with pytest.raises(ws.WebSocketError) as caught:
        decode_all(data, max_message)
    return caught.value.code


# -- messages ---------------------------------------------------------------------------


def test_text_and_binary_messages() -> None:
    data = client_frames(TextMessage("42[\"hi\"]"), BytesMessage(b"\x00\xff"))
    assert decode_all(data) == ["42[\"hi\"]", b"\x00\xff"]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_every_length_encoding(size: int) -> None:
    data = client_frames(BytesMessage(b"x" * size))
    assert decode_all(data, max_message=size) == [b"x" * size]


def test_any_cut_of_the_stream() -> None:
    data = client_frames(TextMessage("héllo"), Ping(b"p"), BytesMessage(b"b" * 300))
    for cut in range(len(data) + 1):
        decoder = ws.FrameDecoder(MAX)
        assert decoder.feed(data[:cut]) + decoder.feed(data[cut:]) == [
            "héllo", ws.Ping(b"p"), b"b" * 300]


def test_byte_by_byte() -> None:
    data = client_frames(TextMessage("4probe"), TextMessage("5"))
    decoder = ws.FrameDecoder(MAX)
    events: list[ws.Event] = []
    for index in range(len(data)):
        events += decoder.feed(data[index:index + 1])
    assert events == ["4probe", "5"]


def test_fragments_are_joined_with_control_frames_between() -> None:
    text = "€" * 10
    encoded = text.encode()
    data = (raw(0x01, encoded[:4]) + raw(0x89, b"ping") + raw(0x00, encoded[4:11])
            + raw(0x80, encoded[11:]))
    assert decode_all(data) == [ws.Ping(b"ping"), text]


def test_pong_and_close() -> None:
    data = raw(0x8A, b"x") + client_frames(CloseConnection(1001, "bye"))
    assert decode_all(data) == [ws.Pong(b"x"), ws.Close(1001, "bye")]


def test_close_without_status() -> None:
    assert decode_all(raw(0x88, b"")) == [ws.Close(None, "")]


def test_nothing_is_read_after_close() -> None:
    decoder = ws.FrameDecoder(MAX)
    assert decoder.feed(raw(0x88, b"") + raw(0x81, b"late")) == [ws.Close(None, "")]
    assert decoder.done
    assert decoder.feed(raw(0x81, b"later")) == []


@given(st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=8),
       st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20))
def test_round_trip_under_any_chunking(messages: list[str | bytes], cuts: list[int]) -> None:
    proto = FrameProtocol(client=True, extensions=[])
    data = b"".join(proto.send_data(m, True) for m in messages)
    decoder = ws.FrameDecoder(10_000)
    events: list[ws.Event] = []
    pos = 0
    for cut in cuts * (len(data) // max(sum(cuts), 1) + 1):
        events += decoder.feed(data[pos:pos + cut])
        pos += cut
    events += decoder.feed(data[pos:])
    assert events == messages


# -- the rules ------------------------------------------------------------------------


def test_reserved_bits_without_an_extension() -> None:
    assert error_code(raw(0xC1, b"x")) == ws.PROTOCOL_ERROR  # RSV1: no deflate agreed


def test_unmasked_client_frame() -> None:
    assert error_code(raw(0x81, b"x", masked=False)) == ws.PROTOCOL_ERROR


def test_fragmented_control_frame() -> None:
    assert error_code(raw(0x09, b"x")) == ws.PROTOCOL_ERROR


def test_control_frame_over_125_bytes() -> None:
    assert error_code(raw(0x89, b"x" * 126)) == ws.PROTOCOL_ERROR


def test_continuation_with_nothing_to_continue() -> None:
    assert error_code(raw(0x80, b"x")) == ws.PROTOCOL_ERROR


def test_new_message_inside_a_fragmented_one() -> None:
    assert error_code(raw(0x01, b"a") + raw(0x81, b"b")) == ws.PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
def test_unknown_opcode(opcode: int) -> None:
    assert error_code(raw(0x80 | opcode, b"")) == ws.PROTOCOL_ERROR


def test_text_that_is_not_utf8() -> None:
    assert error_code(raw(0x81, b"\xff")) == ws.INVALID_DATA


def test_utf8_checked_on_the_whole_message_not_each_fragment() -> None:
    encoded = "é".encode()
    assert decode_all(raw(0x01, encoded[:1]) + raw(0x80, encoded[1:])) == ["é"]


def test_message_over_the_limit_fails_on_its_header() -> None:
    # Only the header has arrived: the decoder refuses before buffering the payload.
    decoder = ws.FrameDecoder(MAX)
    header = raw(0x82, b"", length=MAX + 1)[:4]
    with pytest.raises(ws.WebSocketError) as caught:
        decoder.feed(header)
    assert caught.value.code == ws.MESSAGE_TOO_BIG
    assert decoder.done


def test_fragments_over_the_limit_together() -> None:
    data = raw(0x02, b"x" * 600) + raw(0x80, b"x" * 401)
    assert error_code(data) == ws.MESSAGE_TOO_BIG


def test_a_message_at_the_limit_passes() -> None:
    assert decode_all(raw(0x02, b"x" * 600) + raw(0x80, b"x" * 400)) == [b"x" * MAX]


def test_close_with_a_one_byte_payload() -> None:
    assert error_code(raw(0x88, b"\x03")) == ws.PROTOCOL_ERROR


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 2000, 5000])
def test_close_with_an_invalid_code(code: int) -> None:
    assert error_code(raw(0x88, struct.pack("!H", code))) == ws.PROTOCOL_ERROR


@pytest.mark.parametrize("code", [1000, 1003, 1007, 1014, 3000, 4999])
def test_close_with_a_valid_code(code: int) -> None:
    assert decode_all(raw(0x88, struct.pack("!H", code))) == [ws.Close(code, "")]


def test_close_reason_that_is_not_utf8() -> None:
    assert error_code(raw(0x88, b"\x03\xe8\xff")) == ws.INVALID_DATA


def test_after_an_error_nothing_more_is_read() -> None:
    decoder = ws.FrameDecoder(MAX)
    with pytest.raises(ws.WebSocketError):
        decoder.feed(raw(0x81, b"x", masked=False))
    assert decoder.feed(raw(0x81, b"x")) == []


# -- what the server writes -----------------------------------------------------------


def server_frames(data: bytes) -> list[tuple[Opcode, object]]:
    """What wsproto, as a client, reads from the server's bytes: (opcode, payload)."""
    reader = FrameProtocol(client=True, extensions=[])
    reader.receive_bytes(data)
    return [(frame.opcode, frame.payload) for frame in reader.received_frames()]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_encoded_messages_read_back_by_wsproto(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)
    assert server_frames(ws.encode_messages([text, b"\x01" * size])) == [
        (Opcode.TEXT, text), (Opcode.BINARY, b"\x01" * size)]


def test_control_frames_read_back_by_wsproto() -> None:
    frames = server_frames(ws.encode_pong(b"abc") + ws.encode_close(1009, "too big"))
    assert frames == [(Opcode.PONG, b"abc"), (Opcode.CLOSE, (1009, "too big"))]


def test_close_without_a_status_is_an_empty_close_frame() -> None:
    assert ws.encode_close(None) == bytes((0x80 | Opcode.CLOSE, 0))


def test_accept_token_matches_the_rfc_example() -> None:
    # RFC 6455, section 1.3.
    assert ws.accept_token(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("first", [0x83, 0x87, 0x8B, 0x8F])
def test_unknown_opcode_fails_on_its_header(first: int) -> None:
    # Refused before its payload (here not even sent) is buffered; the length is one
    # that every other rule would accept.
    decoder = ws.FrameDecoder(MAX)
    with pytest.raises(ws.WebSocketError) as caught:
        decoder.feed(raw(first, b"", length=100)[:4])
    assert caught.value.code == ws.PROTOCOL_ERROR


def test_misplaced_fragment_is_a_protocol_error_whatever_its_size() -> None:
    assert error_code(raw(0x80, b"", length=MAX + 1)[:4]) == ws.PROTOCOL_ERROR
    assert error_code(raw(0x01, b"a") + raw(0x81, b"", length=MAX + 1)[:4]) == \
        ws.PROTOCOL_ERROR
