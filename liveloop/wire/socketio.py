"""Socket.IO v5 packets: encoding, and a decoder that reassembles binary packets.

Text form: ``<type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]``. A
BINARY_EVENT or BINARY_ACK is followed by its attachments, each one binary Engine.IO
message, which replace the ``{"_placeholder": true, "num": n}`` objects in the data.
"""

from __future__ import annotations

import enum
import json
import math
import re
from typing import Any, Final

import attrs

from .errors import ProtocolError
from .fastjson import compact_encoder


class PacketType(enum.IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


class _Absent(enum.Enum):
    ABSENT = "absent"


ABSENT: Final = _Absent.ABSENT
"""``data`` of a packet that carries none (distinct from JSON ``null``)."""

_TYPES = {str(t.value): t for t in PacketType}
_MAX_ACK_ID = 2**53  # JavaScript's safe integers; the client's counter never goes past
_MAX_NAMESPACE = 256
_MAX_DEPTH = 100  # nesting of arrays and objects: deeper data is refused, not recursed into
_RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
_SURROGATE = re.compile("[\ud800-\udfff]")


# Non-ASCII as is (UTF-8 on the wire); see fastjson for why it is made once.
_json_encode = compact_encoder(ensure_ascii=False)


def _dumps(data: Any) -> str:
    # A lone surrogate (valid in a JSON string, e.g. decoded from "\ud800") has no UTF-8
    # form: escape it as JSON does, so that the text can always be sent. ASCII text has
    # none, and is checked in a fraction of the time the search takes.
    text = _json_encode(data)
    if text.isascii():
        return text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


_loads = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_parse_float).decode


@attrs.frozen(slots=True)
class Packet:
    """One Socket.IO packet, binary attachments already in place."""

    type: PacketType
    namespace: str = "/"
    data: Any = ABSENT
    id: int | None = None


def encode(packet: Packet) -> list[str | bytes]:
    """Encode a packet: the text part first, then one ``bytes`` per binary attachment.

    ``bytes`` anywhere in an EVENT or ACK's data make it a BINARY_EVENT or BINARY_ACK.
    """
    kind = packet.type
    data = packet.data
    attachments: list[bytes] = []
    if kind in (PacketType.EVENT, PacketType.ACK, PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
        data = _deconstruct(data, attachments)
        if attachments:
            kind = PacketType.BINARY_ACK if kind in (PacketType.ACK, PacketType.BINARY_ACK) \
                else PacketType.BINARY_EVENT
        elif kind is PacketType.BINARY_EVENT:
            kind = PacketType.EVENT
        elif kind is PacketType.BINARY_ACK:
            kind = PacketType.ACK
    text = str(kind.value)
    if attachments:
        text += f"{len(attachments)}-"
    if packet.namespace != "/":
        text += packet.namespace + ","
    if packet.id is not None:
        text += str(packet.id)
    if data is not ABSENT:
        text += _dumps(data)
    return [text, *attachments]


def encode_control(packet: Packet) -> str:
    """Encode a packet that can't carry binary (CONNECT, DISCONNECT, CONNECT_ERROR)."""
    text = encode(packet)[0]
    assert isinstance(text, str)
    return text


def encode_event(namespace: str, event: str, args: tuple[Any, ...] | list[Any],
                 ack_id: int | None = None) -> list[str | bytes]:
    """Encode EVENT ``[event, *args]`` (BINARY_EVENT if any argument holds bytes)."""
    try:
        # The common case, with no bytes inside: one pass of the C encoder. It raises
        # TypeError at the first bytes object, and the general path takes over.
        data = _dumps([event, *args])
    except TypeError:
        return encode(Packet(PacketType.EVENT, namespace, [event, *args], ack_id))
    head = "2" if namespace == "/" else f"2{namespace},"
    return [head + data if ack_id is None else f"{head}{ack_id}{data}"]


def event_json(event: str, args: tuple[Any, ...] | list[Any]) -> str:
    """The JSON text of ``[event, *args]`` exactly as :func:`encode_event` writes it in
    a text packet (TypeError if an argument holds bytes): what a relay carries to another
    node, whose socket then writes it with :meth:`NamespaceSocket.emit_json
    <liveloop.server.sockets.NamespaceSocket.emit_json>`."""
    return _dumps([event, *args])


def encode_ack(namespace: str, args: tuple[Any, ...] | list[Any], ack_id: int
               ) -> list[str | bytes]:
    """Encode ACK ``ack_id`` with ``args`` (BINARY_ACK if any holds bytes)."""
    try:
        data = _dumps(list(args))  # as encode_event: one C pass when no bytes are inside
    except TypeError:
        return encode(Packet(PacketType.ACK, namespace, list(args), ack_id))
    return [f"3{ack_id}{data}" if namespace == "/" else f"3{namespace},{ack_id}{data}"]


def _deconstruct(data: Any, out: list[bytes]) -> Any:
    if isinstance(data, (bytes, bytearray, memoryview)):
        out.append(bytes(data))
        return {"_placeholder": True, "num": len(out) - 1}
    if isinstance(data, list | tuple):
        return [_deconstruct(item, out) for item in data]
    if isinstance(data, dict):
        return {key: _deconstruct(value, out) for key, value in data.items()}
    return data


@attrs.define
class Decoder:
    """Turns a connection's Engine.IO messages into Socket.IO packets.

    Feed every text message to :meth:`feed_text` and every binary message to
    :meth:`feed_binary`; each returns a complete packet or ``None`` while a binary
    packet still waits for attachments. A :class:`ProtocolError` means the connection
    must be closed: the decoder is then in an undefined state.
    """

    max_attachments: int = 10
    _pending: Packet | None = attrs.field(default=None, init=False)
    _expected: int = attrs.field(default=0, init=False)
    _buffers: list[bytes] = attrs.field(factory=list, init=False)

    @property
    def waiting_for_attachments(self) -> bool:
        return self._pending is not None

    def feed_text(self, text: str) -> Packet | None:
        if self._pending is not None:
            raise ProtocolError("text packet while binary attachments were expected")
        packet, attachments = _parse(text, self.max_attachments)
        if attachments == 0:
            if packet.type in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
                # "50-": no attachment follows, so no placeholder may stand in the data
                return attrs.evolve(packet, data=_reconstruct(packet.data, []))
            return packet
        self._pending, self._expected, self._buffers = packet, attachments, []
        return None

    def feed_binary(self, data: bytes) -> Packet | None:
        if self._pending is None:
            raise ProtocolError("unexpected binary attachment")
        self._buffers.append(data)
        if len(self._buffers) < self._expected:
            return None
        packet, buffers = self._pending, self._buffers
        self._pending, self._expected, self._buffers = None, 0, []
        return attrs.evolve(packet, data=_reconstruct(packet.data, buffers))


def _parse(text: str, max_attachments: int) -> tuple[Packet, int]:
    if not text:
        raise ProtocolError("empty Socket.IO packet")
    kind = _TYPES.get(text[0])
    if kind is None:
        raise ProtocolError(f"unknown Socket.IO packet type {text[0]!r}")
    pos, end = 1, len(text)
    attachments = 0
    if kind in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
        dash = text.find("-", pos)
        digits = text[pos:dash] if dash >= 0 else ""
        if not digits.isdigit() or not digits.isascii():
            raise ProtocolError("binary packet without an attachment count")
        # a bounded count before int(): Python refuses to convert over 4300 digits
        if len(digits) > 9 or int(digits) > max_attachments:
            raise ProtocolError(f"{digits[:12]} attachments exceed {max_attachments}")
        attachments = int(digits)
        pos = dash + 1
    namespace = "/"
    if pos < end and text[pos] == "/":
        comma = text.find(",", pos)
        namespace = text[pos:comma] if comma >= 0 else text[pos:]
        pos = comma + 1 if comma >= 0 else end
        if len(namespace) > _MAX_NAMESPACE:
            raise ProtocolError("namespace too long")
    ack_id: int | None = None
    start = pos
    while pos < end and "0" <= text[pos] <= "9":
        pos += 1
    if pos > start:
        if pos - start > 16:
            raise ProtocolError("ack id too long")
        ack_id = int(text[start:pos])
        if ack_id > _MAX_ACK_ID:
            raise ProtocolError("ack id out of range")
    data: Any = ABSENT
    if pos < end:
        body = text[pos:]
        try:
            data = _loads(body)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError("invalid JSON in packet") from exc
        # Counting brackets is C-speed and bounds the depth: walk only when it might be over.
        if body.count("[") + body.count("{") > _MAX_DEPTH and not _shallow(data):
            raise ProtocolError(f"data nested deeper than {_MAX_DEPTH}")
    packet = Packet(kind, namespace, data, ack_id)
    _check(packet, attachments)
    return packet, attachments


def _check(packet: Packet, attachments: int) -> None:
    """The payload rules of the Socket.IO v5 specification, per packet type.

    As socket.io-parser, an EVENT may not use a reserved event name such as "disconnect".
    """
    kind, data = packet.type, packet.data
    if kind is PacketType.CONNECT:
        ok = data is ABSENT or isinstance(data, dict)
    elif kind is PacketType.DISCONNECT:
        ok = data is ABSENT
    elif kind is PacketType.CONNECT_ERROR:
        ok = isinstance(data, str | dict)
    elif kind in (PacketType.EVENT, PacketType.BINARY_EVENT):
        ok = isinstance(data, list) and len(data) > 0 and isinstance(data[0], str) \
            and data[0] not in _RESERVED_EVENTS
    else:  # ACK, BINARY_ACK
        ok = isinstance(data, list) and packet.id is not None
    if not ok:
        raise ProtocolError(f"invalid payload for {kind.name}")
    if kind in (PacketType.CONNECT, PacketType.DISCONNECT, PacketType.CONNECT_ERROR) \
            and packet.id is not None:
        raise ProtocolError(f"{kind.name} cannot carry an ack id")


def _shallow(data: Any) -> bool:
    """Whether JSON-decoded ``data`` nests arrays and objects at most ``_MAX_DEPTH`` deep."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, list | dict):
            if depth > _MAX_DEPTH:
                return False
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return True


def _reconstruct(data: Any, buffers: list[bytes]) -> Any:
    if isinstance(data, dict):
        if data.get("_placeholder") is True:  # as socket.io-parser: any such object
            num = data.get("num")
            if type(num) is not int or not 0 <= num < len(buffers):
                raise ProtocolError("placeholder names a missing attachment")
            return buffers[num]
        return {key: _reconstruct(value, buffers) for key, value in data.items()}
    if isinstance(data, list):
        return [_reconstruct(item, buffers) for item in data]
    return data
