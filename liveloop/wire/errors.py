"""The one error type of the wire layer."""

from __future__ import annotations


class ProtocolError(ValueError):
    """Input that the Engine.IO or Socket.IO specification calls invalid.

    ``reason`` is a short human-readable explanation, safe to log; the input itself is
    never echoed into it beyond a bounded excerpt.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
