"""Engine.IO v4 packets and HTTP long-polling payloads.

A packet is a type digit followed by its data. Over WebSocket each packet is one frame: a
text frame for every packet, or a binary frame holding the raw bytes of a binary
``message``. Over long-polling, packets are joined by the record separator ``\\x1e`` and a
binary message is written as ``b`` followed by its base64.
"""

from __future__ import annotations

import binascii
import enum
import json
from base64 import b64encode
from collections.abc import Iterable

import attrs

from .errors import ProtocolError

SEPARATOR = "\x1e"


class PacketType(enum.IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


_TYPES = {str(t.value): t for t in PacketType}


@attrs.frozen(slots=True)
class Packet:
    """One Engine.IO packet. ``data`` is ``bytes`` only for a binary MESSAGE."""

    type: PacketType
    data: str | bytes = ""

    @property
    def binary(self) -> bool:
        return isinstance(self.data, bytes)


def decode_text(frame: str, *, max_size: int) -> Packet:
    """Decode one text packet (a WebSocket text frame, or one record of a payload).

    Raises :class:`ProtocolError` for an empty frame, an unknown type, or more than
    ``max_size`` characters.
    """
    if len(frame) > max_size:
        raise ProtocolError(f"packet of {len(frame)} characters exceeds {max_size}")
    if not frame:
        raise ProtocolError("empty packet")
    kind = _TYPES.get(frame[0])
    if kind is None:
        raise ProtocolError(f"unknown packet type {frame[0]!r}")
    return Packet(kind, frame[1:])


def decode_binary(frame: bytes, *, max_size: int) -> Packet:
    """Decode a WebSocket binary frame: always a binary MESSAGE."""
    if len(frame) > max_size:
        raise ProtocolError(f"binary packet of {len(frame)} bytes exceeds {max_size}")
    return Packet(PacketType.MESSAGE, bytes(frame))


def encode_text(packet: Packet) -> str | bytes:
    """Encode one packet for a WebSocket frame: ``bytes`` means a binary frame."""
    if isinstance(packet.data, bytes):
        return packet.data
    return f"{packet.type.value}{packet.data}"


def decode_payload(body: str, *, max_size: int, max_packets: int) -> list[Packet]:
    """Decode a long-polling request body into its packets.

    Raises :class:`ProtocolError` if the body exceeds ``max_size`` characters, holds more
    than ``max_packets`` packets, or any packet in it is invalid: a payload is taken
    whole or not at all.
    """
    if len(body) > max_size:
        raise ProtocolError(f"payload of {len(body)} characters exceeds {max_size}")
    if body.count(SEPARATOR) >= max_packets:
        raise ProtocolError(f"payload holds more than {max_packets} packets")
    packets: list[Packet] = []
    for record in body.split(SEPARATOR):
        if record.startswith("b"):
            try:
                raw = binascii.a2b_base64(record[1:].encode("ascii"), strict_mode=True)
            except (binascii.Error, UnicodeEncodeError) as exc:
                raise ProtocolError("invalid base64 in binary packet") from exc
            packets.append(Packet(PacketType.MESSAGE, raw))
        else:
            packets.append(decode_text(record, max_size=max_size))
    return packets


def encode_payload_record(packet: Packet) -> str:
    """One packet as it stands inside a long-polling payload."""
    if isinstance(packet.data, bytes):
        return "b" + b64encode(packet.data).decode("ascii")
    return f"{packet.type.value}{packet.data}"


def encode_payload(packets: Iterable[Packet]) -> str:
    """Join packets into one long-polling response body."""
    return SEPARATOR.join(encode_payload_record(p) for p in packets)


def open_packet(
    sid: str, *, upgrades: list[str], ping_interval_ms: int, ping_timeout_ms: int,
    max_payload: int,
) -> Packet:
    """The handshake OPEN packet the server sends first on a new session."""
    body = json.dumps(
        {
            "sid": sid,
            "upgrades": upgrades,
            "pingInterval": ping_interval_ms,
            "pingTimeout": ping_timeout_ms,
            "maxPayload": max_payload,
        },
        separators=(",", ":"),
    )
    return Packet(PacketType.OPEN, body)


PING = Packet(PacketType.PING)
PONG = Packet(PacketType.PONG)
NOOP = Packet(PacketType.NOOP)
CLOSE = Packet(PacketType.CLOSE)
PROBE_PONG = Packet(PacketType.PONG, "probe")
