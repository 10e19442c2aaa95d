"""Just enough of RESP (the Redis protocol) to publish fast, sans-IO.

coredis spends a few hundred microseconds of CPU on every command it sends alone, and
a node publishes one notice per relayed message to a partner on another node. So the
publisher writes PUBLISH commands itself, pipelined, on a connection of its own, and
reads back the replies, which for PUBLISH and AUTH are single lines (``:<n>``, ``+OK``
or ``-<error>``). Everything else goes through coredis.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit


def command(*parts: str | bytes) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def address(url: str) -> tuple[str, int, bytes] | None:
    """Host, port and the AUTH command to send first (empty if none) for a plain
    ``redis://`` URL; None for anything else (TLS, a Unix socket), which the caller
    leaves to coredis."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        return None
    hello = b""
    if parts.password is not None:
        credentials = [unquote(parts.password)]
        if parts.username:
            credentials.insert(0, unquote(parts.username))
        hello = command("AUTH", *credentials)
    return parts.hostname or "127.0.0.1", parts.port or 6379, hello


class Replies:
    """Single-line replies, fed as bytes arrive: counts them and keeps the errors."""

    def __init__(self) -> None:
        self._buffer = b""
        self.count = 0

    def feed(self, data: bytes) -> list[str]:
        """Take ``data``; return the error replies completed by it (usually none)."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\r\n")
        self.count += len(lines)
        return [line[1:].decode(errors="replace") for line in lines if line[:1] == b"-"]


class ReplyError(Exception):
    """Redis answered a subscription's command with an error."""


MAX_BULK = 16 * 2**20
"""The largest bulk string a push may carry: more is a broken stream, not a notice (a
relay's payload is bounded far below by the server's message limits)."""


class Pushes:
    """What a subscribed connection receives, fed as bytes arrive: RESP2 arrays of bulk
    strings and integers (``["message", channel, data]``, ``["subscribe", channel,
    n]``) and simple strings (``+OK`` to AUTH, as ``[b"+OK"]``). An error reply raises
    :class:`ReplyError`; the buffer never holds more than one incomplete push, of at most
    :data:`MAX_BULK` bytes per string."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[bytes | int]]:
        """Take ``data``; return the pushes completed by it, in order."""
        buffer = self._buffer
        buffer += data
        pushes: list[list[bytes | int]] = []
        position = 0
        while position < len(buffer):
            push, end = self._one(buffer, position)
            if push is None:
                break
            pushes.append(push)
            position = end
        del buffer[:position]
        return pushes

    @staticmethod
    def _one(buffer: bytearray, start: int) -> tuple[list[bytes | int] | None, int]:
        line_end = buffer.find(b"\r\n", start)
        if line_end < 0:
            return None, start
        kind = buffer[start]
        if kind == 0x2B:  # +simple string
            return [bytes(buffer[start:line_end])], line_end + 2
        if kind == 0x2D:  # -error
            raise ReplyError(buffer[start + 1:line_end].decode(errors="replace"))
        if kind != 0x2A:  # *array
            raise ReplyError(f"unexpected reply type {chr(kind)!r}")
        count = int(buffer[start + 1:line_end])
        items: list[bytes | int] = []
        position = line_end + 2
        for _ in range(count):
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return None, start
            kind = buffer[position]
            if kind == 0x3A:  # :integer
                items.append(int(buffer[position + 1:line_end]))
                position = line_end + 2
            elif kind == 0x24:  # $bulk string
                size = int(buffer[position + 1:line_end])
                if not 0 <= size <= MAX_BULK:
                    raise ReplyError(f"bulk string of {size} bytes")
                begin = line_end + 2
                if begin + size + 2 > len(buffer):
                    return None, start
                items.append(bytes(buffer[begin:begin + size]))
                position = begin + size + 2
            else:
                raise ReplyError(f"unexpected item type {chr(kind)!r}")
        return items, position
