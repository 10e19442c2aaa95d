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
