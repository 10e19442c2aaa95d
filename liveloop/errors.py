"""The error codes a client can receive, and the shapes errors and acks take on the wire.

An error goes back twice when the client asked for an ack: as the event
``error-message`` ``{code, message, event, retryAfter?}`` and as the ack
``{ok: false, error: {code, message}}``. A request that succeeded is acked ``{ok: true}``.
"""

from __future__ import annotations

import enum
from typing import Any

ERROR_EVENT = "error-message"
"""The server->client event that carries an error."""


class ErrorCode(enum.StrEnum):
    """Every code a client can see in ``error-message`` or in a refusing ack."""

    INVALID_PAYLOAD = "invalid-payload"
    INVALID_ROOM = "invalid-room"
    INVALID_TARGET = "invalid-target"
    NOT_IN_ROOM = "not-in-room"
    RATE_LIMITED = "rate-limited"
    QUEUE_FULL = "queue-full"
    UNAVAILABLE = "unavailable"
    UNKNOWN_EVENT = "unknown-event"


class LiveLoopError(Exception):
    """A request refused (or only partly honoured) for a reason the client is told."""

    def __init__(self, code: ErrorCode, message: str, *, retry_after: float | None = None
                 ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after


class PayloadError(LiveLoopError):
    """A payload that does not match its event's schema; its code is ``invalid-payload``."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_PAYLOAD, message)


def error_event(error: LiveLoopError, event: str) -> dict[str, Any]:
    """The ``error-message`` payload for ``error`` raised while handling ``event``.

    ``retryAfter`` (seconds) is present only when the error carries one.
    """
    payload: dict[str, Any] = {"code": str(error.code), "message": error.message, "event": event}
    if error.retry_after is not None:
        payload["retryAfter"] = error.retry_after
    return payload


def error_ack(error: LiveLoopError) -> dict[str, Any]:
    """The ack of a refused request: ``{ok: false, error: {code, message}}``."""
    return {"ok": False, "error": {"code": str(error.code), "message": error.message}}


def ok_ack() -> dict[str, Any]:
    """The ack of a request that was honoured: ``{ok: true}``."""
    return {"ok": True}
