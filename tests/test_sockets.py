"""The Socket.IO layer in-process: namespaces, CONNECT/CONNECT_ERROR, events, acks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from liveloop.config import Settings
from liveloop.server import ConnectRefused, EngineServer, Socket, SocketClosed, socketio_server
from liveloop.server.api import JSON, Ack, SocketHandler

from .asgi import WebSocket, websocket

PATH = "/socket.io/"
WS = {"EIO": "4", "transport": "websocket"}


class Recorder:
    """A namespace that records what its sockets see and lets the test act on them."""

    def __init__(self) -> None:
        self.sockets: list[Socket] = []
        self.events: list[tuple[str, list[JSON], bool]] = []
        self.posts: list[object] = []
        self.disconnects: list[str] = []
        self.connected = trio.Event()

    async def connect(self, socket: Socket, auth: JSON) -> SocketHandler:
        if auth.get("refuse"):
            raise ConnectRefused({"message": "no thanks", "data": {"why": auth["refuse"]}})
        socket.emit("welcome", auth)  # sent after CONNECT, never before
        self.sockets.append(socket)
        self.connected.set()
        return _Handler(self, socket)


class _Handler:
    def __init__(self, recorder: Recorder, socket: Socket) -> None:
        self.recorder = recorder
        self.socket = socket

    async def on_event(self, event: str, args: list[JSON], ack: Ack | None) -> None:
        self.recorder.events.append((event, args, ack is not None))
        if event == "boom":
            raise RuntimeError("handler bug")
        if ack is not None:
            ack("got", *args)

    async def on_message(self, message: object) -> None:
        self.recorder.posts.append(message)
        self.socket.emit("posted", str(message))

    async def on_recover(self) -> None:
        pass

    async def on_disconnect(self, reason: str) -> None:
        self.recorder.disconnects.append(reason)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def server(nursery: trio.Nursery, recorder: Recorder) -> AsyncIterator[EngineServer]:
    engine = socketio_server(Settings(max_payload=10_000, recovery_window=0.0),
                            {"/": recorder, "/admin": recorder})
    await nursery.start(engine.run)
    yield engine


async def opened(ws: WebSocket) -> dict[str, Any]:
    frame = await ws.receive()
    assert isinstance(frame, str) and frame[0] == "0"
    return dict(json.loads(frame[1:]))


async def test_connect_with_auth_then_event_with_ack(server: EngineServer,
                                                     recorder: Recorder) -> None:
    async with websocket(server, PATH, WS) as ws:
        await opened(ws)
        await ws.send('40{"token":"abc"}')
        connect = await ws.receive()
        assert isinstance(connect, str) and connect.startswith('40{"sid":')
        assert await ws.receive() == '42["welcome",{"token":"abc"}]'
        await ws.send('4212["hello",1,{"a":[true,null]}]')
        assert await ws.receive() == '4312["got",1,{"a":[true,null]}]'
        assert recorder.events == [("hello", [1, {"a": [True, None]}], True)]


async def test_connect_without_auth_sees_an_empty_object(server: EngineServer) -> None:
    async with websocket(server, PATH, WS) as ws:
        await opened(ws)
        await ws.send("40")
        await ws.receive()
        assert await ws.receive() == '42["welcome",{}]'


async def test_refused_connect(server: EngineServer, recorder: Recorder) -> None:
    async with websocket(server, PATH, WS) as ws:
        await opened(ws)
        await ws.send('40{"refuse":"banned"}')
        assert await ws.receive() == (
            '44{"message":"no thanks","data":{"why":"banned"}}'
        )
        # The session is still usable for another attempt.
        await ws.send("40")
        assert str(await ws.receive()).startswith("40")


async def test_unknown_namespace(server: EngineServer) -> None:
    async with websocket(server, PATH, WS) as ws:
        await opened(ws)
        await ws.send("40/nowhere,")
        assert await ws.receive() == '44/nowhere,{"message":"Invalid namespace"}'


async def test_custom_namespace_and_client_disconnect(server: EngineServer,
                                                      recorder: Recorder) -> None:
    async with websocket(server, PATH, WS) as ws:
        await opened(ws)
        await ws.send("40/admin,")
        assert str(await ws.receive()).startswith('40/admin,{"sid":')
        assert await ws.receive() == '42/admin,["welcome",{}]'
        await ws.send('42/admin,["x"]')
        await ws.send("41/admin,")
        await ws.send("40")  # the connection itself stays
        assert str(await ws.receive()).startswith("40{")
        assert recorder.disconnects == ["client namespace disconnect"]
        assert recorder.events == [("x", [], False)]


async def test_binary_event_and_binary_ack(server: EngineServer, recorder: Recorder) -> None:
    async with websocket(server, PATH, WS) as ws:
        await opened(ws)
        await ws.send("40")
        await ws.receive(), await ws.receive()
        await ws.send('451-3["upload",{"_placeholder":true,"num":0}]')
        await ws.send(b"\x01\x02")
        assert await ws.receive() == '461-3["got",{"_placeholder":true,"num":0}]'
        assert await ws.receive() == b"\x01\x02"
        assert recorder.events == [("upload", [b"\x01\x02"], True)]


async def test_server_to_client_ack(server: EngineServer, recorder: Recorder,
                                    nursery: trio.Nursery) -> None:
    async with websocket(server, PATH, WS) as ws:
        await opened(ws)
        await ws.send("40")
        await ws.receive(), await ws.receive()
        answers: list[list[JSON]] = []

        async def ask() -> None:
            answers.append(await recorder.sockets[0].call("question", 42))

        nursery.start_soon(ask)
        assert await ws.receive() == '420["question",42]'
        await ws.send('430["answer"]')
        await trio.testing.wait_all_tasks_blocked()
        assert answers == [["answer"]]


async def test_call_fails_when_the_socket_closes(server: EngineServer, recorder: Recorder,
                                                 nursery: trio.Nursery) -> None:
    async with websocket(server, PATH, WS) as ws:
        await opened(ws)
        await ws.send("40")
        await ws.receive(), await ws.receive()
        failures: list[BaseException] = []

        async def ask() -> None:
            try:
                await recorder.sockets[0].call("question")
            except SocketClosed as exc:
                failures.append(exc)

        nursery.start_soon(ask)
        await ws.receive()
        await ws.send("41")
        await trio.testing.wait_all_tasks_blocked()
        assert len(failures) == 1


async def test_post_reaches_the_handler_in_its_task(server: EngineServer,
                                                    recorder: Recorder) -> None:
    async with websocket(server, PATH, WS) as ws:
        await opened(ws)
        await ws.send("40")
        await ws.receive(), await ws.receive()
        recorder.sockets[0].post("hello from another actor")
        assert await ws.receive() == '42["posted","hello from another actor"]'


async def test_server_disconnect(server: EngineServer, recorder: Recorder) -> None:
    async with websocket(server, PATH, WS) as ws:
        await opened(ws)
        await ws.send("40")
        await ws.receive(), await ws.receive()
        recorder.sockets[0].disconnect()
        assert await ws.receive() == "41"
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.disconnects == ["server namespace disconnect"]
        assert not recorder.sockets[0].connected


@pytest.mark.parametrize("packet", [
    "4", "49", '42{"not":"an array"}', "42[]", "42[1]", '43["no id"]', "41{}",
    '44{"client":"cannot"}', '42["unterminated"', "401-[]",
])
async def test_invalid_packet_closes_the_connection(server: EngineServer, recorder: Recorder,
                                                    packet: str) -> None:
    async with websocket(server, PATH, WS) as ws:
        await opened(ws)
        await ws.send("40")
        await ws.receive(), await ws.receive()
        await ws.send(packet)
        await ws.closed()
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.disconnects == ["parse error"]


async def test_handler_crash_closes_that_connection_only(server: EngineServer,
                                                         recorder: Recorder) -> None:
    async with websocket(server, PATH, WS) as good, websocket(server, PATH, WS) as bad:
        for ws in (good, bad):
            await opened(ws)
            await ws.send("40")
            await ws.receive(), await ws.receive()
        await bad.send('42["boom"]')
        await bad.closed()
        await good.send('421["still", 2]')
        assert await good.receive() == '431["got",2]'
        assert recorder.disconnects == ["server error"]


async def test_connect_timeout(nursery: trio.Nursery, autojump_clock: object) -> None:
    engine = socketio_server(Settings(connect_timeout=5.0, ping_interval=100.0), {})
    await nursery.start(engine.run)
    async with websocket(engine, PATH, WS) as ws:
        await opened(ws)
        start = trio.current_time()
        await ws.closed()
        assert trio.current_time() - start == pytest.approx(5.0)


async def test_events_before_connect_are_ignored(server: EngineServer,
                                                 recorder: Recorder) -> None:
    async with websocket(server, PATH, WS) as ws:
        await opened(ws)
        await ws.send('42["early"]')
        await ws.send("40")
        assert str(await ws.receive()).startswith("40")
        assert recorder.events == []


async def test_a_payload_with_a_bad_packet_is_not_served_at_all(
    server: EngineServer, recorder: Recorder
) -> None:
    """A request that arrives together with the packet that gets the connection closed
    is not served: the whole polling body is decoded before any of it is handled."""
    from .asgi import http

    polling = {"EIO": "4", "transport": "polling"}
    opened_ = await http(server, "GET", PATH, polling)
    sid = json.loads(opened_.text[1:])["sid"]
    with_sid = {**polling, "sid": sid}
    await http(server, "POST", PATH, with_sid, b"40")
    await http(server, "GET", PATH, with_sid)  # CONNECT answer and welcome
    body = b'42["request",1]\x1e42{"not":"an event"}'
    assert (await http(server, "POST", PATH, with_sid, body)).status == 200
    await trio.testing.wait_all_tasks_blocked()
    assert recorder.events == []
    assert recorder.disconnects == ["parse error"]
