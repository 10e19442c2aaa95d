"""WebSocket framing (RFC 6455, section 5) for the server's side, without I/O.

The server reads masked frames from a client with a :class:`FrameDecoder` and writes
unmasked ones with :func:`encode_messages` and friends. Only what an Engine.IO server
needs is here: no extensions are negotiated (so the RSV bits must be clear) and no
subprotocol. The opening handshake is HTTP's business; :func:`accept_token` is its one
computation.

Every rule the decoder enforces fails with :class:`WebSocketError`, whose ``code`` is the
close code the RFC asks the server to send back; after that, or after a Close frame, the
decoder takes nothing more.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Sequence
from typing import Final

import attrs

from .errors import ProtocolError

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

NORMAL_CLOSURE: Final = 1000
PROTOCOL_ERROR: Final = 1002
INVALID_DATA: Final = 1007
POLICY_VIOLATION: Final = 1008
MESSAGE_TOO_BIG: Final = 1009

_MAX_CONTROL = 125
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WebSocketError(ProtocolError):
    """A frame the RFC calls invalid; ``code`` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@attrs.frozen(slots=True)
class Ping:
    payload: bytes


@attrs.frozen(slots=True)
class Pong:
    payload: bytes


@attrs.frozen(slots=True)
class Close:
    """The peer's Close frame: ``code`` None when it carried no status."""

    code: int | None
    reason: str


Event = str | bytes | Ping | Pong | Close
"""What :meth:`FrameDecoder.feed` yields: a whole text (``str``) or binary (``bytes``)
message, or a control frame."""


def accept_token(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())


def _valid_close_code(code: int) -> bool:
    # 1004-1006 and 1015 are reserved for reporting, never sent in a frame (RFC 6455
    # 7.4.1); 1012-1014 were registered with IANA later and are in use.
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    size = len(payload)
    if not size:
        return b""
    # One XOR over the payload read as a big integer: linear, and no Python-level loop.
    key = (bytes(mask) * ((size + 3) >> 2))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        size, "little")


class FrameDecoder:
    """Reads a client's frames and reassembles its messages.

    ``max_message`` bounds a message's payload (its fragments together): a longer one
    fails with code 1009 as soon as its header says so, before its payload is buffered.
    So the decoder holds at most ``max_message`` plus one frame header.
    """

    def __init__(self, max_message: int) -> None:
        self._max = max_message
        self._buffer = bytearray()
        self._opcode = 0
        """The opcode of the fragmented message in progress, 0 when there is none."""
        self._parts: list[bytes] = []
        self._size = 0
        self.done = False
        """True after a Close frame or an error: nothing more is read."""

    def feed(self, data: bytes | bytearray) -> list[Event]:
        """Take ``data`` (any cut of the stream); the messages and control frames now
        complete, in order. Raises :class:`WebSocketError` on a broken rule; the events
        before it in the same data are lost with it, since the connection is closing."""
        if self.done:
            return []
        buffer = self._buffer
        buffer += data
        events: list[Event] = []
        pos = 0
        end = len(buffer)
        try:
            while end - pos >= 2:
                first = buffer[pos]
                second = buffer[pos + 1]
                length = second & 0x7F
                head = pos + 2
                if length == 126:
                    if end - head < 2:
                        break
                    length = (buffer[head] << 8) | buffer[head + 1]
                    head += 2
                elif length == 127:
                    if end - head < 8:
                        break
                    (length,) = struct.unpack_from("!Q", buffer, head)
                    head += 8
                self._check_header(first, second, length)
                stop = head + 4 + length
                if stop > end:
                    break
                payload = _unmask(buffer[head + 4:stop], buffer[head:head + 4])
                pos = stop
                event = self._frame(first, payload)
                if event is not None:
                    events.append(event)
                    if type(event) is Close:
                        self.done = True
                        break
        except WebSocketError:
            self.done = True
            raise
        finally:
            del buffer[:pos]
        return events

    def _check_header(self, first: int, second: int, length: int) -> None:
        """Every rule a frame's header alone decides, before its payload is buffered."""
        if first & 0x70:
            raise WebSocketError(PROTOCOL_ERROR, "reserved bits set (no extension agreed)")
        if not second & 0x80:
            raise WebSocketError(PROTOCOL_ERROR, "unmasked frame from a client")
        opcode = first & 0x0F
        if opcode >= CLOSE:
            if opcode > PONG:
                raise WebSocketError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            if not first & 0x80:
                raise WebSocketError(PROTOCOL_ERROR, "fragmented control frame")
            if length > _MAX_CONTROL:
                raise WebSocketError(PROTOCOL_ERROR, "control frame over 125 bytes")
            return
        if opcode > BINARY:
            raise WebSocketError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if opcode == CONTINUATION:
            if not self._opcode:
                raise WebSocketError(PROTOCOL_ERROR, "continuation with no message to continue")
        elif self._opcode:
            raise WebSocketError(PROTOCOL_ERROR, "new message inside a fragmented one")
        if self._size + length > self._max:
            raise WebSocketError(MESSAGE_TOO_BIG, "message over the size limit")

    def _frame(self, first: int, payload: bytes) -> Event | None:
        opcode = first & 0x0F
        final = first & 0x80
        if opcode in (TEXT, BINARY):  # _check_header made sure no message is in progress
            if final:
                return _message(opcode, payload)
            self._opcode = opcode
            self._parts.append(payload)
            self._size = len(payload)
            return None
        if opcode == CONTINUATION:
            self._parts.append(payload)
            self._size += len(payload)
            if not final:
                return None
            opcode, self._opcode = self._opcode, 0
            whole = b"".join(self._parts)
            self._parts, self._size = [], 0
            return _message(opcode, whole)
        if opcode == PING:
            return Ping(payload)
        if opcode == PONG:
            return Pong(payload)
        return _close(payload)  # the only opcode left


def _message(opcode: int, payload: bytes) -> str | bytes:
    if opcode == BINARY:
        return payload
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketError(INVALID_DATA, "text message is not UTF-8") from None


def _close(payload: bytes) -> Close:
    if not payload:
        return Close(None, "")
    if len(payload) == 1:
        raise WebSocketError(PROTOCOL_ERROR, "close frame with a one-byte payload")
    code = (payload[0] << 8) | payload[1]
    if not _valid_close_code(code):
        raise WebSocketError(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketError(INVALID_DATA, "close reason is not UTF-8") from None
    return Close(code, reason)


def _header(opcode: int, size: int) -> bytes:
    if size < 126:
        return bytes((0x80 | opcode, size))
    if size < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, size)
    return struct.pack("!BBQ", 0x80 | opcode, 127, size)


def encode_messages(messages: Sequence[str | bytes]) -> bytes:
    """Server frames for these messages, in order, as one write: ``str`` as a text
    frame, ``bytes`` as a binary one, each unfragmented."""
    parts: list[bytes] = []
    append = parts.append
    for message in messages:
        if isinstance(message, str):
            data = message.encode("utf-8")
            size = len(data)
            append(bytes((0x81, size)) if size < 126 else _header(TEXT, size))
        else:
            data = message
            append(_header(BINARY, len(data)))
        append(data)
    return b"".join(parts)


def encode_pong(payload: bytes) -> bytes:
    """The Pong answering a Ping with ``payload``."""
    return _header(PONG, len(payload)) + payload


def encode_close(code: int | None, reason: str = "") -> bytes:
    """A Close frame; ``code`` None sends one without a status."""
    if code is None:
        return _header(CLOSE, 0)
    payload = struct.pack("!H", code) + reason.encode("utf-8")[:_MAX_CONTROL - 2]
    return _header(CLOSE, len(payload)) + payload
