"""The generic Socket.IO layer against real clients.

A small probe application is built from ``liveloop.server``'s public API (a
:class:`Namespace` that records what it sees and hands each server-side socket to the
test), served by hypercorn, and driven by the official npm ``socket.io-client`` and by
python-socketio (see ``tests/nodeclient.py``), over every transport choice.

Every wait is on an event, an ack or a server-side record, under ``trio.fail_after``;
nothing sleeps to synchronise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio

from liveloop.app import RootApp
from liveloop.config import Settings
from liveloop.server import ConnectRefused, Socket, socketio_server
from liveloop.server.api import JSON, Ack

from .conftest import DEADLINE, Variant, start_server
from .nodeclient import NodeClient

AUTH = {"token": "secret", "user": "ann", "nested": {"n": [1, 2.5, None, True]}}


class ProbeHandler:
    """One server-side socket: records events and its disconnect reason."""

    def __init__(self, socket: Socket, auth: JSON) -> None:
        self.socket = socket
        self.auth = auth
        self._events_send, self.events = trio.open_memory_channel[
            tuple[str, list[JSON], bool]](100)
        self.gone = trio.Event()
        self.reason: str | None = None
        # set ``hold`` to make on_disconnect wait for it (a handler that awaits)
        self.hold: trio.Event | None = None
        self.disconnect_started = trio.Event()
        self.outcome: str | None = None

    async def on_event(self, event: str, args: list[JSON], ack: Ack | None) -> None:
        self._events_send.send_nowait((event, args, ack is not None))
        if event == "echo":
            self.socket.emit("echo-back", *args)
        elif event == "with-ack" and ack is not None:
            ack(*args)

    async def on_message(self, message: object) -> None:
        pass

    async def on_recover(self) -> None:
        pass

    async def on_disconnect(self, reason: str) -> None:
        self.reason = reason
        self.disconnect_started.set()
        try:
            if self.hold is not None:
                await self.hold.wait()
            self.outcome = "completed"
        except trio.Cancelled:
            self.outcome = "cancelled"
            raise
        finally:
            self.gone.set()

    async def next_event(self) -> tuple[str, list[JSON], bool]:
        with trio.fail_after(DEADLINE):
            return await self.events.receive()


class Probe:
    """The namespace: refuses any auth without the right token, with data."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[ProbeHandler](100)

    async def connect(self, socket: Socket, auth: JSON) -> ProbeHandler:
        if not isinstance(auth, dict) or auth.get("token") != "secret":
            raise ConnectRefused({"message": "not authorized",
                                  "data": {"reason": "bad token", "auth": auth}})
        handler = ProbeHandler(socket, auth)
        self._send.send_nowait(handler)
        return handler

    async def next_socket(self) -> ProbeHandler:
        with trio.fail_after(DEADLINE):
            return await self._receive.receive()


@attrs.frozen
class Server:
    url: str
    probe: Probe


async def start_probe(nursery: trio.Nursery, **overrides: Any) -> Server:
    # The Socket.IO layer as the protocol suites see it: recovery (whose offsets change
    # every event's arguments) has its own tests, in test_recovery.py.
    settings = attrs.evolve(Settings(bind="127.0.0.1:0", recovery_window=0.0), **overrides)
    probe = Probe()
    app = RootApp({"/socket.io/": socketio_server(settings, {"/": probe})}, None)
    return Server(await start_server(nursery, app, settings), probe)


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    yield await start_probe(nursery)


@pytest.fixture
async def client(variant: Variant) -> AsyncIterator[NodeClient]:
    async with NodeClient(variant.kind) as c:  # type: ignore[arg-type]
        yield c


def plain(variant: Variant) -> dict[str, Any]:
    """The variant's options without the recovery opt-out (recovery is off here)."""
    opts = variant.opts()
    opts.pop("auth", None)
    return opts


async def connected(client: NodeClient, server: Server, variant: Variant,
                    name: str = "main", **opts: Any) -> tuple[dict[str, Any], ProbeHandler]:
    with trio.fail_after(DEADLINE):
        reply = await client.connect(server.url, name=name, auth=AUTH,
                                     **plain(variant), **opts)
    handler = await server.probe.next_socket()
    return reply, handler


# -- connecting ---------------------------------------------------------------------


async def test_connect_with_auth(client: NodeClient, server: Server,
                                 variant: Variant) -> None:
    reply, handler = await connected(client, server, variant)
    assert reply["ok"] is True
    assert handler.auth == AUTH
    assert reply["sid"] == handler.socket.sid
    assert handler.socket.connected
    with trio.fail_after(DEADLINE):
        line = await client.next("connect", socket="main")
    assert line["sid"] == handler.socket.sid


async def test_refused_connect_gives_connect_error_with_data(
        client: NodeClient, server: Server, variant: Variant) -> None:
    with trio.fail_after(DEADLINE):
        reply = await client.connect(server.url, auth={"token": "wrong"}, check=False,
                                     **plain(variant))
        line = await client.next("connect_error", socket="main")
    assert reply["ok"] is False
    assert reply["message"] == line["message"] == "not authorized"
    assert reply["data"] == line["data"] == {"reason": "bad token",
                                             "auth": {"token": "wrong"}}
    # The refused client is not half-connected: a good one still gets in afterwards.
    _, handler = await connected(client, server, variant, name="second")
    assert handler.auth == AUTH


# -- events and acks ---------------------------------------------------------------


async def test_client_emit_and_client_to_server_ack(client: NodeClient, server: Server,
                                                    variant: Variant) -> None:
    _, handler = await connected(client, server, variant)
    await client.emit("hello", 1, "two", {"three": [3, None, False]})
    assert await handler.next_event() == ("hello", [1, "two", {"three": [3, None, False]}],
                                          False)
    with trio.fail_after(DEADLINE):
        acked = await client.emit("with-ack", "a", {"b": 2}, ack=True)
    assert acked == ["a", {"b": 2}]
    assert await handler.next_event() == ("with-ack", ["a", {"b": 2}], True)
    # an event with no arguments at all
    await client.emit("bare")
    assert await handler.next_event() == ("bare", [], False)


async def test_server_emit(client: NodeClient, server: Server, variant: Variant) -> None:
    _, handler = await connected(client, server, variant)
    handler.socket.emit("news", {"headline": "hi", "n": 3}, "extra", None)
    with trio.fail_after(DEADLINE):
        line = await client.next("event", event="news")
    assert line["args"] == [{"headline": "hi", "n": 3}, "extra", None]
    assert line["ack_id"] is None
    # echo: client -> server -> client, in order
    for i in range(5):
        await client.emit("echo", i)
    with trio.fail_after(DEADLINE):
        got = [(await client.next("event", event="echo-back"))["args"] for _ in range(5)]
    assert got == [[i] for i in range(5)]


async def test_server_to_client_ack(client: NodeClient, server: Server,
                                    variant: Variant) -> None:
    _, handler = await connected(client, server, variant)
    # answered automatically by the driver
    await client.ack_next(42, {"sure": True}, event="question")
    with trio.fail_after(DEADLINE):
        assert await handler.socket.call("question", 41) == [42, {"sure": True}]
    line = await client.next("event", event="question")
    assert line["args"] == [41] and line["acked"] == [42, {"sure": True}]

    # answered by hand, while the server waits
    answers: list[list[JSON]] = []
    async with trio.open_nursery() as nursery:

        async def ask() -> None:
            answers.append(await handler.socket.call("by-hand", "q"))

        nursery.start_soon(ask)
        with trio.fail_after(DEADLINE):
            line = await client.next("event", event="by-hand")
            assert line["args"] == ["q"] and isinstance(line["ack_id"], int)
            await client.ack(line["ack_id"], "manual", 7)
    assert answers == [["manual", 7]]


# -- disconnecting -----------------------------------------------------------------


async def test_client_disconnect(client: NodeClient, server: Server,
                                 variant: Variant) -> None:
    _, handler = await connected(client, server, variant)
    await client.disconnect()
    with trio.fail_after(DEADLINE):
        line = await client.next("disconnect", socket="main")
        await handler.gone.wait()
    assert line["reason"] == "io client disconnect"
    if variant == Variant("python", ("websocket",)):
        # python-engineio closes its WebSocket right after queueing DISCONNECT and CLOSE,
        # without waiting for its writer to send them: the server may only see the close.
        assert handler.reason in {"client namespace disconnect", "transport close"}
    else:
        assert handler.reason == "client namespace disconnect"
    assert not handler.socket.connected


async def test_server_disconnect(client: NodeClient, server: Server,
                                 variant: Variant) -> None:
    _, handler = await connected(client, server, variant)
    handler.socket.disconnect()
    with trio.fail_after(DEADLINE):
        line = await client.next("disconnect", socket="main")
        await handler.gone.wait()
    assert line["reason"] == "io server disconnect"
    assert handler.reason == "server namespace disconnect"
    with trio.fail_after(DEADLINE):
        state = await client.state()
    assert state["connected"] is False


async def test_heartbeat_timeout(client: NodeClient, variant: Variant,
                                 nursery: trio.Nursery) -> None:
    server = await start_probe(nursery, ping_interval=0.2, ping_timeout=0.2)
    _, handler = await connected(client, server, variant, report_pings=True)
    # Heartbeats work while the client answers: two pings come and the socket lives.
    with trio.fail_after(DEADLINE):
        await client.next("ping", socket="main")
        await client.next("ping", socket="main")
    assert handler.socket.connected and handler.reason is None
    await client.stop_pongs()
    with trio.fail_after(DEADLINE):
        await handler.gone.wait()
        line = await client.next("disconnect", socket="main")
    assert handler.reason == "ping timeout"
    # The client learns it through its transport: a closed WebSocket, or a CLOSE packet
    # in answer to its pending poll (which python-socketio reports as a server disconnect).
    reasons = {"transport close", "transport error"}
    if variant == Variant("python", ("polling",)):
        reasons.add("io server disconnect")
    assert line["reason"] in reasons, line


# -- transports and binary ---------------------------------------------------------


async def test_transport_and_upgrade(client: NodeClient, server: Server,
                                     variant: Variant) -> None:
    reply, handler = await connected(client, server, variant)
    if variant.kind == "node" and variant.starts_with_polling:
        # socket.io-client's defaults: long-polling first, then the upgrade (which may
        # complete before or after the Socket.IO CONNECT is answered).
        assert reply["transport"] in {"polling", "websocket"}
        with trio.fail_after(DEADLINE):
            line = await client.next("upgrade", socket="main")
        assert line["transport"] == "websocket"
    elif variant.kind == "python" and variant.starts_with_polling:
        assert reply["transport"] == "polling"
    else:
        assert reply["transport"] == "websocket"
    # Traffic flows both ways on whatever transport the client settled on.
    with trio.fail_after(DEADLINE):
        assert await client.emit("with-ack", "after", ack=True) == ["after"]
        state = await client.state()
    expected = "polling" if variant.transports == ("polling",) else "websocket"
    assert state["transport"] == expected
    if variant.transports is not None:
        assert not [m for m in client.drain() if m["type"] == "upgrade"]
    assert handler.socket.connected


async def test_binary_round_trip(client: NodeClient, server: Server,
                                 variant: Variant) -> None:
    _, handler = await connected(client, server, variant)
    blob = bytes(range(256)) * 4
    args = [blob, {"name": "x", "parts": [b"\x00", b"\xff\xfe", "text"]}, 7]
    await client.emit("echo", *args)
    event, received, _ = await handler.next_event()
    assert event == "echo" and received == args  # attachments back in place, as bytes
    with trio.fail_after(DEADLINE):
        line = await client.next("event", event="echo-back")
    assert line["args"] == args
    # binary in a client->server ack
    with trio.fail_after(DEADLINE):
        assert await client.emit("with-ack", b"\x01\x02\x03", ack=True) == [b"\x01\x02\x03"]
    # binary in a server->client event with ack, and in the client's answer
    await client.ack_next(b"answer\x00", event="bin-question")
    with trio.fail_after(DEADLINE):
        assert await handler.socket.call("bin-question", {"data": b"\x10\x20"}) == [
            b"answer\x00"]
    line = await client.next("event", event="bin-question")
    assert line["args"] == [{"data": b"\x10\x20"}]


# -- a server bug these tests found -------------------------------------------------


async def _asgi_http(app: Any, method: str, query: str, body: bytes = b"",
                     on_body: Any = None) -> tuple[int, bytes]:
    """One in-process ASGI request; ``on_body`` runs inside the app's final ``send``, i.e.
    after the whole response is out but before the app's ``send`` call has returned."""
    scope = {"type": "http", "method": method, "path": "/engine.io/", "headers": [],
             "query_string": query.encode(), "scheme": "http"}
    given = False
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal given
        if given:
            await trio.sleep_forever()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            chunks.append(message.get("body", b""))
            if on_body is not None:
                await on_body()

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def test_post_sent_as_soon_as_the_previous_post_is_answered(nursery: trio.Nursery
                                                                 ) -> None:
    import json

    from liveloop.conformance import EchoApp
    from liveloop.server import EngineServer

    server = EngineServer(Settings(), EchoApp)
    await nursery.start(server.run)
    status, body = await _asgi_http(server, "GET", "EIO=4&transport=polling")
    assert status == 200
    sid = json.loads(body[1:])["sid"]
    query = f"EIO=4&transport=polling&sid={sid}"
    second: list[tuple[int, bytes]] = []

    async def next_post() -> None:
        second.append(await _asgi_http(server, "POST", query, b"4two"))

    assert await _asgi_http(server, "POST", query, b"4one", on_body=next_post) == (200, b"ok")
    assert second == [(200, b"ok")]
    assert not server.sessions[sid].closed


async def test_on_disconnect_completes_when_the_transport_closes_meanwhile(
        server: Server) -> None:
    from trio_websocket import open_websocket_url

    url = server.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    with trio.fail_after(DEADLINE):
        async with open_websocket_url(url) as ws:
            assert str(await ws.get_message()).startswith("0{")
            await ws.send_message('40{"token":"secret"}')
            assert str(await ws.get_message()).startswith('40{"sid":')
            handler = await server.probe.next_socket()
            handler.hold = trio.Event()
            session = handler.socket._session  # type: ignore[attr-defined]
            await ws.send_message("41")  # DISCONNECT: on_disconnect starts, and waits
            await handler.disconnect_started.wait()
        # the WebSocket is closed now, while on_disconnect is still running
        await session.closed_event.wait()
        handler.hold.set()
        await handler.gone.wait()
    assert handler.reason == "client namespace disconnect"
    assert handler.outcome == "completed"
