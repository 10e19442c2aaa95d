"""Driving an ASGI app in-process, with no sockets: requests under the Trio test clock."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import attrs
import trio

from liveloop.server.asgi import ASGIApp, Message


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def _scope(kind: str, path: str, params: dict[str, str], headers: dict[str, str],
           method: str = "GET") -> dict[str, Any]:
    return {
        "type": kind,
        "method": method,
        "path": path,
        "query_string": urlencode(params).encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "scheme": "http",
    }


async def http(app: ASGIApp, method: str, path: str, params: dict[str, str] | None = None,
               body: bytes = b"", headers: dict[str, str] | None = None) -> Response:
    """One HTTP request; returns when the app has sent the whole response."""
    scope = _scope("http", path, params or {}, {"host": "test", **(headers or {})}, method)
    sent = False
    start: Message = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await trio.sleep_forever()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
        else:
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return Response(
        start["status"],
        {k.decode(): v.decode() for k, v in start["headers"]},
        b"".join(chunks),
    )


@attrs.define
class WebSocket:
    """The client end of an in-process WebSocket."""

    to_app: trio.MemorySendChannel[Message]
    from_app: trio.MemoryReceiveChannel[Message]
    accepted: bool = False
    close_code: int | None = None

    async def send(self, data: str | bytes) -> None:
        key = "text" if isinstance(data, str) else "bytes"
        await self.to_app.send({"type": "websocket.receive", key: data})

    async def receive(self) -> str | bytes:
        """The next frame; raises ``EOFError`` with the close code when closed."""
        message = await self.from_app.receive()
        if message["type"] == "websocket.accept":
            self.accepted = True
            return await self.receive()
        if message["type"] == "websocket.close":
            self.close_code = message.get("code", 1000)
            raise EOFError(self.close_code)
        text: str | None = message.get("text")
        if text is not None:
            return text
        data: bytes = message["bytes"]
        return data

    async def closed(self) -> int:
        """Read frames until the app closes; returns the close code."""
        while True:
            try:
                await self.receive()
            except EOFError as closed:
                return int(closed.args[0])

    async def disconnect(self) -> None:
        await self.to_app.send({"type": "websocket.disconnect", "code": 1000})


@asynccontextmanager
async def websocket(app: ASGIApp, path: str, params: dict[str, str],
                    headers: dict[str, str] | None = None) -> AsyncIterator[WebSocket]:
    """Open a WebSocket to the app; the app's task lives as long as the block."""
    to_app, app_in = trio.open_memory_channel[Message](64)
    app_out, from_app = trio.open_memory_channel[Message](1024)
    scope = _scope("websocket", path, params, {"host": "test", **(headers or {})})

    async def receive() -> Message:
        try:
            return await app_in.receive()
        except trio.EndOfChannel:
            return {"type": "websocket.disconnect", "code": 1006}

    async def send(message: Message) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await app_out.send(message)

    await to_app.send({"type": "websocket.connect"})
    client = WebSocket(to_app, from_app)
    done = trio.Event()

    async def run_app() -> None:
        try:
            await app(scope, receive, send)
        finally:
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_app)
        try:
            yield client
        finally:
            # The client goes away; the app must notice and end by itself.
            await to_app.aclose()
            with trio.fail_after(60):
                await done.wait()
