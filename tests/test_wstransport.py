"""``liveloop serve``'s own WebSocket transport (:mod:`liveloop.server.wstransport`) behind
its front door (:mod:`liveloop.server.frontdoor`).

The handshake, framing and coalescing run on Trio's in-memory streams against an echoing
Engine.IO server; the hand-over to hypercorn (polling, REST, anything not an Engine.IO
WebSocket) on a real listener.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import cast

import h11
import pytest
import trio
import trio.testing
from hypercorn.typing import ASGIFramework, ConnectionState
from hypercorn.utils import wrap_app
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import FrameProtocol

from liveloop.app import RootApp
from liveloop.config import Settings
from liveloop.conformance import EchoApp
from liveloop.serve import hypercorn_config, serve
from liveloop.server import EngineServer, wstransport
from liveloop.server.frontdoor import Server
from liveloop.server.session import FLUSH_GRACE, OutFrame, take_all

from .conftest import receive_response
from .fuzz import Fuzz

PATH = "/engine.io/"
SETTINGS = Settings(bind="127.0.0.1:0", max_payload=1000, allowed_origins=("*",))
WS = f"{PATH}?EIO=4&transport=websocket"


class Writes:
    """Counts the server's writes to its sockets (``wstransport._write``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = os.write  # what wstransport._write is

        def counting(fd: int, data: bytes) -> int:
            self.count += 1
            return real(fd, data)

        monkeypatch.setattr(wstransport, "_write", counting)


def asgi(app: RootApp) -> ASGIFramework:
    """``app`` as hypercorn's type for an ASGI app, whose scopes are TypedDicts where
    RootApp takes any mapping (serve() passes it as Any)."""
    return cast(ASGIFramework, app)


def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two ends of a connected pair of real sockets (the transport writes to the fd)."""
    one, two = trio.socket.socketpair()
    return trio.SocketStream(one), trio.SocketStream(two)


class Client:
    """A wsproto client on the other end."""

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Event] = []

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next(self) -> Event:
        while not self.events:
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(bytes(data) or None)
            self.events.extend(self.ws.events())
        return self.events.pop(0)

    async def open(self, target: str = WS, origin: str | None = None) -> Event:
        headers = [] if origin is None else [(b"origin", origin.encode())]
        await self.send(Request(host="test", target=target, extra_headers=headers))
        return await self.next()

    async def text(self) -> str:
        """The next text message, whole (wsproto hands large ones over in pieces)."""
        parts: list[str] = []
        while True:
            event = await self.next()
            assert isinstance(event, TextMessage), event
            parts.append(event.data)
            if event.message_finished:
                return "".join(parts)


@pytest.fixture
async def engine(nursery: trio.Nursery) -> AsyncIterator[EngineServer]:
    server = EngineServer(SETTINGS, EchoApp)
    await nursery.start(server.run)
    yield server


@pytest.fixture
async def connect(nursery: trio.Nursery, engine: EngineServer,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Client, Writes]]:
    """A client connected to :class:`Server` over a socket pair."""
    app = RootApp({PATH: engine}, None)
    config = hypercorn_config(SETTINGS)
    server = Server({PATH.rstrip("/"): engine},
                    wrap_app(asgi(app), config.wsgi_max_body_size, None),
                    config, ConnectionState({}), SETTINGS)
    writes = Writes(monkeypatch)
    client_end, server_end = socket_pair()
    nursery.start_soon(server.handle, server_end)
    yield Client(client_end), writes


async def opened(client: Client) -> str:
    assert isinstance(await client.open(), AcceptConnection)
    text = await client.text()
    assert text.startswith("0")
    return str(json.loads(text[1:])["sid"])


async def test_handshake_then_echo(connect: tuple[Client, Writes]) -> None:
    client, _ = connect
    await opened(client)
    await client.send(TextMessage(data="4hello"))
    assert await client.text() == "4hello"
    await client.send(BytesMessage(data=b"\x01\x02"))
    event = await client.next()
    assert isinstance(event, BytesMessage) and event.data == b"\x01\x02"


async def test_frames_split_across_reads_and_fragmented(
        connect: tuple[Client, Writes]) -> None:
    client, _ = connect
    await opened(client)
    raw = client.ws.send(TextMessage(data="4ab", message_finished=False))
    raw += client.ws.send(TextMessage(data="cd", message_finished=True))
    for i in range(len(raw)):  # a byte at a time
        await client.stream.send_all(raw[i:i + 1])
    assert await client.text() == "4abcd"


async def test_queued_packets_leave_in_one_write(
        connect: tuple[Client, Writes], engine: EngineServer) -> None:
    client, writes = connect
    sid = await opened(client)
    # The session task is asleep: packets queued by another task wake it to write them.
    await trio.testing.wait_all_tasks_blocked()
    before = writes.count
    engine.sessions[sid].send_packets(["4one", "4two", b"\x03"])
    assert [await client.text(), await client.text()] == ["4one", "4two"]
    assert isinstance(await client.next(), BytesMessage)
    assert writes.count == before + 1


async def test_refused_origin_gets_403(nursery: trio.Nursery, engine: EngineServer) -> None:
    strict = EngineServer(Settings(allowed_origins=("https://ok.example",)), EchoApp)
    await nursery.start(strict.run)
    config = hypercorn_config(SETTINGS)
    server = Server({PATH.rstrip("/"): strict},
                    wrap_app(asgi(RootApp({PATH: strict}, None)), 0, None), config,
                    ConnectionState({}), SETTINGS)
    client_end, server_end = socket_pair()
    nursery.start_soon(server.handle, server_end)
    event = await Client(client_end).open(origin="https://evil.example")
    assert isinstance(event, RejectConnection) and event.status_code == 403
    assert not strict.sessions


@pytest.mark.parametrize("target", [f"{PATH}?EIO=3&transport=websocket",
                                    f"{PATH}?EIO=4&transport=polling",
                                    f"{PATH}?EIO=4&transport=websocket&sid=nope"])
async def test_bad_query_gets_403(connect: tuple[Client, Writes], target: str) -> None:
    client, _ = connect
    event = await client.open(target)
    assert isinstance(event, RejectConnection) and event.status_code == 403


async def test_ping_is_answered(connect: tuple[Client, Writes]) -> None:
    client, _ = connect
    await opened(client)
    await client.send(Ping(payload=b"x"))
    event = await client.next()
    assert isinstance(event, Pong) and event.payload == b"x"


async def test_client_close_is_answered_and_ends_the_session(
        connect: tuple[Client, Writes], engine: EngineServer) -> None:
    client, _ = connect
    session = engine.sessions[await opened(client)]
    await client.send(CloseConnection(code=1000))
    event = await client.next()
    assert isinstance(event, CloseConnection) and event.code == 1000
    with trio.fail_after(5):
        await session.closed_event.wait()
    assert session.close_reason == "transport close"


async def test_message_over_max_payload_closes(
        connect: tuple[Client, Writes], engine: EngineServer) -> None:
    client, _ = connect
    sid = await opened(client)
    session = engine.sessions[sid]
    await client.send(TextMessage(data="4" + "x" * 600, message_finished=False))
    await client.send(TextMessage(data="x" * 600, message_finished=True))
    event = await client.next()
    assert isinstance(event, CloseConnection) and event.code == 1009
    with trio.fail_after(5):
        await session.closed_event.wait()


async def test_engine_io_close_packet(connect: tuple[Client, Writes],
                                      engine: EngineServer) -> None:
    client, _ = connect
    sid = await opened(client)
    session = engine.sessions[sid]
    await client.send(TextMessage(data="1"))
    event = await client.next()
    assert isinstance(event, CloseConnection) and event.code == 1000
    assert session.closed


# -- through a real listener: the hand-over to hypercorn ----------------------------------


async def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        response = await receive_response(h11.Connection(h11.CLIENT), stream)
        return response.status, response.body


@pytest.fixture
async def url(nursery: trio.Nursery) -> str:
    engine = EngineServer(SETTINGS, EchoApp)
    app = RootApp({PATH: engine}, None)
    urls: list[str] = await nursery.start(serve, app, SETTINGS)
    return urls[0]


async def test_polling_goes_to_hypercorn(url: str) -> None:
    with trio.fail_after(10):
        status, body = await raw_request(
            url, f"GET {PATH}?EIO=4&transport=polling HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert status == 200 and body.startswith(b"0{")


async def test_websocket_elsewhere_goes_to_hypercorn(url: str) -> None:
    request = (b"GET /other/ HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n")
    with trio.fail_after(10):
        status, _ = await raw_request(url, request)
    assert status == 403  # RootApp refuses it, through hypercorn's ASGI


async def test_head_over_16_kib_is_refused(url: str) -> None:
    request = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    with trio.fail_after(10):
        status, _ = await raw_request(url, request)
    assert status >= 400


async def test_websocket_over_tcp(url: str) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    client = Client(await trio.open_tcp_stream(host, int(port)))
    with trio.fail_after(10):
        await opened(client)
        await client.send(TextMessage(data="4over tcp"))
        assert await client.text() == "4over tcp"
    await client.stream.aclose()


async def test_a_slow_reader_is_flushed_in_order_when_it_reads_again(
        connect: tuple[Client, Writes], engine: EngineServer) -> None:
    client, _ = connect
    session = engine.sessions[await opened(client)]
    await trio.testing.wait_all_tasks_blocked()
    # More than the kernel holds: some bytes wait in the transport, later packets in the
    # outbox, and nothing is lost or reordered once the client reads.
    sent = [f"4{index:04d}" + "x" * 20_000 for index in range(40)]
    for frame in sent:
        session.send_packets([frame])
        await trio.testing.wait_all_tasks_blocked()
    assert not session.closed
    assert [await client.text() for _ in sent] == sent


async def test_a_reader_that_never_reads_is_closed_at_the_outbox_bound(
        connect: tuple[Client, Writes], engine: EngineServer) -> None:
    client, _ = connect
    session = engine.sessions[await opened(client)]
    await trio.testing.wait_all_tasks_blocked()
    for _ in range(SETTINGS.outbox_size + 100):
        session.send_packets(["4" + "x" * 20_000])
        await trio.testing.wait_all_tasks_blocked()
        if session.closed:
            break
    assert session.close_reason == "outbox overflow"


async def test_pings_from_a_client_that_does_not_read_cost_one_pong(
        connect: tuple[Client, Writes], engine: EngineServer) -> None:
    client, _ = connect
    session = engine.sessions[await opened(client)]
    await trio.testing.wait_all_tasks_blocked()
    big = "4" + "x" * 400_000  # more than the kernel takes while the client does not read
    session.send_packets([big])
    await trio.testing.wait_all_tasks_blocked()
    transport = session._direct
    assert transport is not None
    pending = len(transport._pending)  # type: ignore[attr-defined]
    assert pending > 0
    for index in range(2000):
        await client.send(Ping(payload=b"%d" % index))
    await trio.testing.wait_all_tasks_blocked()
    assert len(transport._pending) <= pending  # type: ignore[attr-defined]
    assert await client.text() == big
    pongs = [await client.next()]
    assert isinstance(pongs[0], Pong) and pongs[0].payload == b"1999"  # the last one only


def transport(server_end: trio.SocketStream) -> wstransport.FastWebSocket:
    """A FastWebSocket past the handshake, straight on ``server_end``."""
    return wstransport.FastWebSocket(server_end, h11.Connection(h11.SERVER), b"key", b"", 1000)


async def test_a_closing_write_nobody_reads_is_given_up_after_the_grace(
        autojump_clock: object) -> None:
    client_end, server_end = socket_pair()
    ws = transport(server_end)
    start = trio.current_time()
    await ws.close(1000)  # small: the kernel takes it
    await ws.send_frames(["4" + "x" * 2_000_000])  # dropped: a Close was sent
    assert trio.current_time() == start
    unread, server_end2 = socket_pair()
    ws2 = transport(server_end2)
    await ws2.send_frames(["4" + "x" * 2_000_000])  # more than the kernel takes, unread
    assert trio.current_time() - start == pytest.approx(FLUSH_GRACE)
    assert await ws2.receive() is None  # reading stopped: its session will close
    assert not ws2.idle
    await client_end.aclose()
    await unread.aclose()


async def test_bytes_pending_before_start_are_sent_by_a_flusher(
        nursery: trio.Nursery) -> None:
    client_end, server_end = socket_pair()
    ws = transport(server_end)
    big = "4" + "x" * 1_000_000
    ws.write_now([big])  # no nursery yet: what the kernel refuses waits
    assert not ws.idle
    send, receive = trio.open_memory_channel[OutFrame](8)
    send.send_nowait("4after")
    ws.start(nursery, lambda: take_all(receive))
    reader = FrameProtocol(client=True, extensions=[])
    texts: list[str] = []
    parts: list[str] = []
    while len(texts) < 2:
        with trio.fail_after(5):
            data = await client_end.receive_some(65536)
        reader.receive_bytes(data)
        for frame in reader.received_frames():  # a large frame comes in pieces
            parts.append(str(frame.payload))
            if frame.frame_finished:
                texts.append("".join(parts))
                parts = []
    assert texts == [big, "4after"]  # the outbox, after what was pending
    assert ws.idle


# -- protocol violations: that connection alone closes, with the protocol's code ------------

_FRAMES = Fuzz(0)


@pytest.mark.parametrize("data, code", [
    pytest.param(_FRAMES.frame(b"4a", masked=False), 1002, id="unmasked"),
    pytest.param(_FRAMES.frame(b"4a", rsv=4), 1002, id="rsv-bit"),
    pytest.param(_FRAMES.frame(b"", opcode=3), 1002, id="unknown-opcode"),
    pytest.param(_FRAMES.frame(b"4\xff\xfe"), 1007, id="text-not-utf8"),
    pytest.param(_FRAMES.frame(b"p" * 126, opcode=9), 1002, id="control-over-125"),
    pytest.param(_FRAMES.frame(b"p", opcode=9, fin=False), 1002, id="fragmented-control"),
    pytest.param(_FRAMES.frame(b"a", opcode=0), 1002, id="lone-continuation"),
    pytest.param(_FRAMES.frame(b"4a", fin=False) + _FRAMES.frame(b"4b"), 1002,
                 id="message-inside-message"),
    pytest.param(_FRAMES.frame(b"\x03\xe7", opcode=8), 1002, id="close-code-999"),
    pytest.param(_FRAMES.frame(b"\x03", opcode=8), 1002, id="close-payload-1-byte"),
    pytest.param(_FRAMES.frame(b"\x03\xe8\xff", opcode=8), 1007, id="close-reason-not-utf8"),
    pytest.param(_FRAMES.frame(b"", length=2**40), 1009, id="declared-over-max-payload"),
    pytest.param(_FRAMES.frame(b"x"), 1000, id="not-engine-io"),
    pytest.param(_FRAMES.frame(b"0"), 1000, id="engine-io-open-from-client"),
])
async def test_a_protocol_violation_closes_that_connection_alone(
        url: str, data: bytes, code: int) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    victim = Client(await trio.open_tcp_stream(host, int(port)))
    bystander = Client(await trio.open_tcp_stream(host, int(port)))
    with trio.fail_after(10):
        await opened(victim)
        await opened(bystander)
        await victim.stream.send_all(data)
        event = await victim.next()
        while not isinstance(event, CloseConnection):
            event = await victim.next()
        assert event.code == code
        await bystander.send(TextMessage(data="4still here"))
        assert await bystander.text() == "4still here"
    await victim.stream.aclose()
    await bystander.stream.aclose()
