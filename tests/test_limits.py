"""The protective limits: sessions in all, per client address (connections, handshakes,
X-Forwarded-For only from trusted proxies), request head and body deadlines.

Address parsing and the counters are tested alone; the rest against the real server
(``liveloop serve``'s front door, hypercorn behind it) over TCP from 127.0.0.1, or the
Engine.IO server in-process under the Trio clock where time is the point.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from liveloop.app import create_app
from liveloop.config import Settings
from liveloop.conformance import EchoApp
from liveloop.server import EngineServer
from liveloop.server.asgi import Message
from liveloop.server.limits import (
    ConnectionCount,
    HandshakeWindow,
    client_address,
    scope_client,
    trusted_networks,
)

from .conftest import DEADLINE, start_server

PROXIES = trusted_networks(["10.0.0.0/8", "192.0.2.7"])
POLL = "/socket.io/?EIO=4&transport=polling"
WS = "/socket.io/?EIO=4&transport=websocket"
UPGRADE = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")

# -- who the client is ------------------------------------------------------------------


@pytest.mark.parametrize(("peer", "headers", "client"), [
    ("203.0.113.5", [b"198.51.100.1"], "203.0.113.5"),  # not a proxy: header ignored
    ("10.1.2.3", [b"198.51.100.1"], "198.51.100.1"),
    ("10.1.2.3", [b"6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # spoofed left part
    ("10.1.2.3", [b"6.6.6.6", b"198.51.100.1, 10.9.9.9"], "198.51.100.1"),  # via 2 proxies
    ("10.1.2.3", [b"198.51.100.1, 192.0.2.7"], "198.51.100.1"),
    ("10.1.2.3", [b"10.4.4.4, 192.0.2.7"], "10.1.2.3"),  # every hop ours: the peer
    ("10.1.2.3", [], "10.1.2.3"),
    ("10.1.2.3", [b"not-an-address"], "10.1.2.3"),
    ("10.1.2.3", [b"6.6.6.6, garbage"], "10.1.2.3"),  # garbage where ours write
    ("10.1.2.3", [b"2001:db8::1"], "2001:db8::1"),
    ("10.1.2.3", [b" , 198.51.100.1 ,"], "198.51.100.1"),
    ("::ffff:10.1.2.3", [b"198.51.100.1"], "198.51.100.1"),  # IPv4 on an IPv6 socket
    ("::ffff:203.0.113.5", [b"198.51.100.1"], "203.0.113.5"),
    ("", [b"198.51.100.1"], "198.51.100.1"),  # a Unix socket: a local proxy
    ("", [], ""),
])
def test_client_address(peer: str, headers: list[bytes], client: str) -> None:
    assert client_address(peer, headers, PROXIES) == client


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_address("10.1.2.3", [b"198.51.100.1"], ()) == "10.1.2.3"
    assert client_address("::ffff:10.1.2.3", [b"198.51.100.1"], ()) == "10.1.2.3"
    scope = {"client": ("10.1.2.3", 5), "headers": [(b"x-forwarded-for", b"198.51.100.1")]}
    assert scope_client(scope, PROXIES) == "198.51.100.1"
    assert scope_client({"headers": []}, PROXIES) == ""


def test_a_bad_trusted_proxy_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="does not appear to be"):
        trusted_networks(["10.0.0.0/8", "proxy.example"])


def test_connection_count() -> None:
    count = ConnectionCount(2)
    assert count.open("a") and count.open("a") and count.open("b")
    assert not count.open("a")
    count.close("a")
    assert count.open("a")
    for address in ("a", "a", "b"):
        count.close(address)
    assert len(count) == 0  # an address leaves at its last close


def test_handshake_window() -> None:
    now = [100.0]
    window = HandshakeWindow(3, 10.0, lambda: now[0])
    assert [window.allow("a") for _ in range(3)] == [None, None, None]
    now[0] = 104.0
    assert window.allow("a") == pytest.approx(6.0)
    assert window.allow("b") is None  # each address its own window
    now[0] = 110.0
    assert window.allow("a") is None  # a new window
    now[0] = 125.0
    assert window.allow("c") is None
    assert len(window) == 1  # a and b were swept with their windows


# -- against the real server --------------------------------------------------------------


@attrs.frozen
class Answer:
    status: int
    head: str
    body: bytes


async def request(stream: trio.SocketStream, target: str, extra: str = "") -> Answer:
    """One request on ``stream`` (kept open); the answer (by Content-Length)."""
    await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
    data = b""
    with trio.fail_after(DEADLINE):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed without an answer: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        text = head.decode("latin-1")
        length = 0
        for line in text.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        while len(body) < length:
            body += await stream.receive_some(65536)
    return Answer(int(text.split()[1]), text, body)


async def fetch(url: str, target: str, extra: str = "") -> Answer:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        return await request(stream, target, extra)


async def serving(nursery: trio.Nursery, **overrides: Any) -> str:
    settings = attrs.evolve(Settings(bind="127.0.0.1:0"), **overrides)
    return await start_server(nursery, create_app(settings), settings)


async def until_not(url: str, target: str, status: int) -> Answer:
    """Ask until the answer is not ``status`` (the server has seen a close)."""
    with trio.fail_after(DEADLINE):
        while True:
            answer = await fetch(url, target)
            if answer.status != status:
                return answer
            await trio.sleep(0.01)


def forwarded(address: str) -> str:
    return f"X-Forwarded-For: {address}\r\n"


async def test_handshakes_per_address_polling_and_websocket(nursery: trio.Nursery) -> None:
    url = await serving(nursery, handshakes_per_ip=3, handshake_window=600.0)
    for _ in range(2):
        assert (await fetch(url, POLL, forwarded("198.51.100.1"))).status == 200
    assert (await fetch(url, WS, UPGRADE)).status == 101
    # The 4th, however it comes and whatever it claims: X-Forwarded-For is not ours.
    for target, extra in ((POLL, ""), (POLL, forwarded("198.51.100.2")), (WS, UPGRADE)):
        refused = await fetch(url, target, extra)
        assert refused.status == 429, refused
        assert "retry-after: 600" in refused.head.lower()


async def test_forwarded_for_counts_from_a_trusted_proxy(nursery: trio.Nursery) -> None:
    url = await serving(nursery, handshakes_per_ip=1, handshake_window=600.0,
                        trusted_proxies=("127.0.0.1",))
    assert (await fetch(url, POLL, forwarded("198.51.100.1"))).status == 200
    assert (await fetch(url, WS, UPGRADE + forwarded("198.51.100.1"))).status == 429
    # A client can't escape by writing its own entry on the left.
    assert (await fetch(url, POLL, forwarded("6.6.6.6, 198.51.100.1"))).status == 429
    assert (await fetch(url, WS, UPGRADE + forwarded("198.51.100.2"))).status == 101
    assert (await fetch(url, POLL)).status == 200  # no header: the proxy itself
    assert (await fetch(url, POLL)).status == 429


async def test_an_upgrade_is_not_a_new_session(nursery: trio.Nursery) -> None:
    url = await serving(nursery, handshakes_per_ip=1, handshake_window=600.0)
    opened = await fetch(url, POLL)
    sid = json.loads(opened.body[1:])["sid"]
    assert (await fetch(url, f"{WS}&sid={sid}", UPGRADE)).status == 101
    assert (await fetch(url, POLL)).status == 429


async def test_sessions_in_all(nursery: trio.Nursery) -> None:
    url = await serving(nursery, max_sessions=2)
    assert (await fetch(url, POLL)).status == 200
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as ws:
        assert (await request(ws, WS, UPGRADE)).status == 101
        assert (await fetch(url, POLL)).status == 503
        assert (await fetch(url, WS, UPGRADE)).status == 503
    # The WebSocket's session ends with its connection; then there is room again.
    assert (await until_not(url, POLL, 503)).status == 200


async def test_connections_per_address(nursery: trio.Nursery) -> None:
    url = await serving(nursery, max_connections_per_ip=2, header_timeout=600.0)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    first = await trio.open_tcp_stream(host, int(port))
    second = await trio.open_tcp_stream(host, int(port))
    assert (await request(first, "/")).status == 200  # kept alive, still counted
    assert (await fetch(url, "/")).status == 429
    await second.aclose()
    assert (await until_not(url, "/", 429)).status == 200  # once the server saw the close
    await first.aclose()


async def test_connections_per_address_behind_a_proxy(nursery: trio.Nursery) -> None:
    url = await serving(nursery, max_connections_per_ip=1, trusted_proxies=("127.0.0.0/8",),
                        header_timeout=600.0)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as held:
        assert (await request(held, "/", forwarded("198.51.100.1"))).status == 200
        assert (await fetch(url, "/", forwarded("198.51.100.1"))).status == 429
        assert (await fetch(url, "/", forwarded("198.51.100.2"))).status == 200


async def closed_by_server(stream: trio.SocketStream) -> None:
    with trio.fail_after(DEADLINE):
        while await stream.receive_some(65536):
            pass


async def test_header_timeout_on_both_paths(nursery: trio.Nursery) -> None:
    """A head that never ends is dropped after ``header_timeout``: on the front door's
    first read, and on hypercorn's later ones."""
    url = await serving(nursery, header_timeout=0.2)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        await closed_by_server(stream)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        assert (await request(stream, "/")).status == 200
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        await closed_by_server(stream)


# -- in-process, on the Trio clock ---------------------------------------------------------


async def test_body_timeout(nursery: trio.Nursery, autojump_clock: object) -> None:
    engine = EngineServer(Settings(body_timeout=10.0), EchoApp)
    await nursery.start(engine.run)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def never(status: int = 200) -> Message:
        await trio.sleep_forever()
        raise AssertionError

    async def handshake() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/engine.io/", "headers": [],
             "query_string": b"EIO=4&transport=polling"}
    await engine(scope, handshake, send)
    sid = json.loads(sent[-1]["body"][1:])["sid"]
    start = trio.current_time()
    post = {**scope, "method": "POST",
            "query_string": f"EIO=4&transport=polling&sid={sid}".encode()}
    await engine(post, never, send)
    assert trio.current_time() - start == pytest.approx(10.0)
    assert sent[-2]["status"] == 408
    await trio.testing.wait_all_tasks_blocked()
    assert sid not in engine.sessions  # its session is closed


async def test_asgi_websocket_refusal_is_an_http_answer(nursery: trio.Nursery) -> None:
    """Under plain hypercorn (ASGI), a refused handshake is answered 429 before the
    upgrade where the server offers ``websocket.http.response``."""
    engine = EngineServer(Settings(handshakes_per_ip=0), EchoApp)
    await nursery.start(engine.run)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    scope = {"type": "websocket", "path": "/engine.io/", "headers": [],
             "client": ("198.51.100.1", 4), "query_string": b"EIO=4&transport=websocket",
             "extensions": {"websocket.http.response": {}}}
    await engine(scope, receive, send)
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 429
    assert not engine.sessions


async def test_refusals_are_counted(nursery: trio.Nursery) -> None:
    from .test_metrics import scrape, value

    async def counting(**overrides: Any) -> tuple[Any, str, str, int]:
        settings = attrs.evolve(Settings(bind="127.0.0.1:0", metrics_bind="127.0.0.1:0"),
                                **overrides)
        app = create_app(settings)
        url = await start_server(nursery, app, settings)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        return app, url, host, int(port)

    app, url, host, port = await counting(max_connections_per_ip=1, max_sessions=1,
                                          handshakes_per_ip=1, handshake_window=600.0,
                                          header_timeout=600.0)
    async with await trio.open_tcp_stream(host, port) as held:
        assert (await request(held, POLL)).status == 200
        assert (await request(held, POLL)).status == 503  # max_sessions is checked first
        assert (await fetch(url, "/")).status == 429  # a second connection
    found = await scrape(app)
    assert value(found, "liveloop_refused_total", limit="connections_per_ip") == 1
    assert value(found, "liveloop_refused_total", limit="sessions") == 1
    assert value(found, "liveloop_refused_total", limit="handshakes_per_ip") == 0

    app, url, host, port = await counting(header_timeout=0.2, handshakes_per_ip=1,
                                          handshake_window=600.0)
    async with await trio.open_tcp_stream(host, port) as slow:
        await slow.send_all(b"GET / HTTP/1.1\r\n")
        await closed_by_server(slow)
    assert (await fetch(url, POLL)).status == 200
    assert (await fetch(url, POLL)).status == 429
    found = await scrape(app)
    assert value(found, "liveloop_refused_total", limit="header_timeout") == 1
    assert value(found, "liveloop_refused_total", limit="handshakes_per_ip") == 1


async def test_a_draining_engine_takes_no_new_session(nursery: trio.Nursery) -> None:
    """In-process: after ``drain`` a polling handshake gets 503 (counted), a session that
    joined no namespace is closed at once, and ``drained`` returns when none is left."""
    from liveloop.metrics import Metrics
    from liveloop.server import socketio_server

    from .asgi import http
    from .test_metrics import read, value

    metrics = Metrics(process=False)
    engine = socketio_server(Settings(), {}, metrics)
    await nursery.start(engine.run)
    params = {"EIO": "4", "transport": "polling"}
    assert (await http(engine, "GET", "/socket.io/", params)).status == 200
    assert len(engine.sessions) == 1
    engine.drain()
    refused = await http(engine, "GET", "/socket.io/", params)
    assert (refused.status, refused.body) == (503, b"Service Unavailable")
    with trio.fail_after(DEADLINE):
        await engine.drained()
    assert value(read(metrics), "liveloop_refused_total", limit="draining") == 1
    assert value(read(metrics), "liveloop_disconnects_total",
                 reason="server shutting down") == 1
