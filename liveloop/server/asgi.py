"""The few ASGI helpers the transports share."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

log = logging.getLogger(__name__)


def query(scope: Scope) -> dict[str, str]:
    """The query string's parameters; the last of repeated names wins."""
    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of the request header ``name`` (lower case), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


async def respond(send: Send, status: int, body: bytes, headers: Headers,
                  content_type: bytes = b"text/plain; charset=UTF-8") -> None:
    """Send a whole HTTP response."""
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


async def refuse_websocket(send: Send, code: int) -> None:
    """Refuse a WebSocket handshake (``websocket.close`` before accepting).

    A server that can no longer send it has nothing left to tell the client, so that is
    not the app's failure: logged at DEBUG. hypercorn 0.18 raises h11's
    ``LocalProtocolError`` here when the client sent more bytes with the handshake (its
    reader parses them while the refusal is being written); the fuzz test found it."""
    try:
        await send({"type": "websocket.close", "code": code})
    except Exception as exc:
        log.debug("WebSocket refusal not sent: %r", exc)


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None if it exceeds ``limit`` bytes (reading stops there)
    or the client went away."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
