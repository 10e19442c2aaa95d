"""Shared helpers for the integration tests (real clients against a real server).

- :data:`VARIANTS` / the ``variant`` fixture: every client kind and transport choice the
  integration tests run against (official npm ``socket.io-client`` with its default
  transports and WebSocket-only, python-socketio WebSocket-only and polling-only).
- :func:`start_server`: an app served by hypercorn in the test's nursery, on a free port.
- :func:`http_get`: a tiny HTTP/1.1 GET over a raw Trio stream, parsed with h11, reading
  exactly ``Content-Length`` bytes of body.
- :data:`ENTRIES` / the module-scoped ``entry`` and ``hosts`` fixtures: the ways a user
  starts Live Loop (``liveloop serve``, hypercorn's workers, uvicorn; see
  ``tests/hosts.py``), for tests that run against each.
- :class:`Sock`: one named socket of a :class:`~tests.nodeclient.NodeClient`, keeping the
  log of everything it received, in arrival order, for ordering checks; :func:`join`,
  :func:`pair`, :func:`events` and the ``node`` fixture (one npm ``socket.io-client``
  driver) for the tests that use them.
- the ``redis`` fixture: a real Redis server for the test (tests/cluster.py).

No fixture here is called ``clock`` (a test module defines its own).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import attrs
import h11
import pytest
import trio
from hypothesis import settings as hypothesis_settings

from liveloop.app import RootApp
from liveloop.config import Settings
from liveloop.serve import serve

from .cluster import RedisServer, running_redis
from .hosts import ENTRIES, Entry, Hosts
from .nodeclient import NodeClient

# Hypothesis' per-example deadline (200 ms) is a timed test: on a busy machine an example
# that takes microseconds is sometimes descheduled past it, and the run fails by chance.
# Speed is the benchmarks' business; a test's own settings still override this.
hypothesis_settings.register_profile("liveloop", deadline=None)
hypothesis_settings.load_profile("liveloop")

DEADLINE = 10
"""Seconds any single wait in an integration test may take before it fails."""

CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host",
             "sdpMid": "0", "sdpMLineIndex": 0}
"""An ICE candidate for a test to relay (``sdpMid`` replaced to tell relays apart)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("liveloop")
    group.addoption("--fuzz-seconds", type=float, default=None,
                    help="seconds of fuzzing in tests/test_fuzz.py (default 4, or "
                    "LIVELOOP_FUZZ_SECONDS)")
    group.addoption("--fuzz-seed", type=int, default=None,
                    help="seed of tests/test_fuzz.py (default random, or LIVELOOP_FUZZ_SEED)")


def fuzz_seconds(config: pytest.Config) -> float:
    """How long tests/test_fuzz.py fuzzes: ``--fuzz-seconds``, else
    ``LIVELOOP_FUZZ_SECONDS``, else 4."""
    value = config.getoption("fuzz_seconds")
    return float(value if value is not None else os.environ.get("LIVELOOP_FUZZ_SECONDS", 4))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A long fuzz run outlasts the suite's per-test timeout: give it its length and more.
    for item in items:
        if item.get_closest_marker("fuzz") is not None:
            item.add_marker(pytest.mark.timeout(fuzz_seconds(config) + 90))


@attrs.frozen
class Variant:
    """A client kind and the transports it is told to use (None: its defaults)."""

    kind: str
    transports: tuple[str, ...] | None

    def opts(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.transports is not None:
            opts["transports"] = list(self.transports)
        if self.kind == "python":
            # python-socketio cannot recover a connection: it opts out, as docs/recovery.md
            # tells its users to (else its events carry offsets, and a transport close
            # that overtakes its DISCONNECT leaves its session waiting for the window).
            opts["auth"] = {"recovery": False}
        return opts

    @property
    def starts_with_polling(self) -> bool:
        return self.transports is None or self.transports[0] == "polling"


VARIANTS = [
    pytest.param(Variant("node", None), id="node-default"),
    pytest.param(Variant("node", ("websocket",)), id="node-websocket"),
    pytest.param(Variant("python", ("websocket",)), id="python-websocket"),
    pytest.param(Variant("python", ("polling",)), id="python-polling"),
]


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> Variant:
    """Every integration test runs once per client kind and transport choice."""
    value: Variant = request.param
    return value


@pytest.fixture(scope="module", params=[
    pytest.param(entry, id=entry.name, marks=pytest.mark.skipif(
        not entry.available, reason=f"{entry.name}: not installed"))
    for entry in ENTRIES])
def entry(request: pytest.FixtureRequest) -> Entry:
    """Tests that take it run once per way of starting the server, module by module."""
    value: Entry = request.param
    return value


@pytest.fixture(scope="module")
def hosts(entry: Entry) -> Iterator[Hosts]:
    """The entry's child servers, started on first use and kept for the module."""
    started = Hosts(entry)
    try:
        yield started
    finally:
        started.close()


async def start_server(nursery: trio.Nursery, app: RootApp, settings: Settings) -> str:
    """Serve ``app`` in ``nursery`` (``settings.bind`` should use port 0); its URL."""
    urls: list[str] = await nursery.start(serve, app, settings)
    return urls[0]


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def receive_response(conn: h11.Connection, stream: trio.abc.ReceiveStream
                           ) -> Response:
    """The response ``conn`` receives next on ``stream``, once complete (a kept-alive
    ``conn`` is then ready for its next request), or what came of it before the
    connection closed (status 0: not even its head)."""
    status, headers, body = 0, {}, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            if conn.our_state is conn.their_state is h11.DONE:
                conn.start_next_cycle()
            return Response(status, headers, bytes(body))


async def http_get(url: str, path: str) -> Response:
    """``GET path`` on the server at ``url`` (``http://host:port``), one connection."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        request = h11.Request(method="GET", target=path, headers=[
            ("Host", parts.netloc), ("Connection", "close"), ("Accept", "application/json")])
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        response = await receive_response(conn, stream)
    assert conn.their_state is h11.MUST_CLOSE, f"closed before the end: {response}"
    # h11 frames the body by Content-Length: check we got exactly that many bytes.
    if "content-length" in response.headers:
        assert len(response.body) == int(response.headers["content-length"])
    return response


def split_offset(line: dict[str, Any]) -> dict[str, Any]:
    """An event line with its recovery offset (a trailing decimal string, which no Live
    Loop payload is) moved from ``args`` to ``offset`` (None when it had none)."""
    if line.get("type") == "event" and "offset" not in line:
        args = line.get("args") or []
        if args and isinstance(args[-1], str) and args[-1].isdigit():
            line = {**line, "args": args[:-1], "offset": args[-1]}
        else:
            line = {**line, "offset": None}
    return line


class Sock:
    """One named socket of a driver process, with the log of all it received.

    ``log`` holds every line of this socket (events, connect, disconnect...) in the
    order the client received them, whether or not a test waited for it, so that
    ordering rules can be checked over the whole session afterwards.
    """

    def __init__(self, client: NodeClient, name: str) -> None:
        self.client = client
        self.name = name
        self.sid: str = ""
        self.log: list[dict[str, Any]] = []
        self._unread: list[dict[str, Any]] = []

    async def connect(self, url: str, **opts: Any) -> dict[str, Any]:
        reply = await self.client.connect(url, name=self.name, **opts)
        self.sid = reply["sid"]
        return reply

    async def emit(self, event: str, *args: Any) -> None:
        await self.client.emit(event, *args, socket=self.name)

    async def call(self, event: str, *args: Any, ack_timeout: float | None = None) -> Any:
        """Emit with an ack; the ack's single argument (``ack_timeout``: as the
        driver's :meth:`~tests.nodeclient.NodeClient.emit`)."""
        acked = await self.client.emit(event, *args, ack=True, socket=self.name,
                                       ack_timeout=ack_timeout)
        assert acked is not None and len(acked) == 1, acked
        return acked[0]

    async def _line(self) -> dict[str, Any]:
        line = split_offset(await self.client.next(socket=self.name))
        self.log.append(line)
        return line

    async def wait(self, type_: str = "event", event: str | None = None,
                   where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The next unread line of ``type_`` (and ``event``, and ``where``); others stay
        unread, in order. Wrap in ``trio.fail_after``."""

        def matches(line: dict[str, Any]) -> bool:
            return (line.get("type") == type_
                    and (event is None or line.get("event") == event)
                    and (where is None or where(line)))

        for i, line in enumerate(self._unread):
            if matches(line):
                return self._unread.pop(i)
        while True:
            line = await self._line()
            if matches(line):
                return line
            self._unread.append(line)

    async def receive(self, event: str,
                      where: Callable[[dict[str, Any]], bool] | None = None) -> Any:
        """The payload (first argument, or None) of the next ``event``."""
        line = await self.wait("event", event, where)
        args = line["args"]
        return args[0] if args else None

    def unread(self) -> list[dict[str, Any]]:
        """Lines received but not waited for (including any already buffered)."""
        lines = self.client.drain()  # every socket's lines received so far
        mine = [split_offset(line) for line in lines if line.get("socket") == self.name]
        # hand the other sockets' lines back, in order, for their own waits
        self.client._pending.extend(line for line in lines if line.get("socket") != self.name)
        self.log.extend(mine)
        self._unread.extend(mine)
        return list(self._unread)

    def take_unread(self) -> list[dict[str, Any]]:
        lines = self.unread()
        self._unread.clear()
        return lines


@pytest.fixture
async def node() -> AsyncIterator[NodeClient]:
    """One npm ``socket.io-client`` driver for the test. Every line a socket receives
    waits in the driver's channel until the test reads it, so the buffer is large: a
    test may read a few thousand lines at its end."""
    async with NodeClient("node", buffer=20_000) as client:
        yield client


@pytest.fixture
async def redis(nursery: trio.Nursery) -> AsyncIterator[RedisServer]:
    """A real Redis server of the test's own (skipped without one)."""
    async with running_redis(nursery) as server:
        yield server


async def join(node: NodeClient, name: str, url: str, **opts: Any) -> Sock:
    """Socket ``name`` of ``node``, connected to ``url`` (``opts``: the client's)."""
    sock, _ = await joined(node, name, url, **opts)
    return sock


async def joined(node: NodeClient, name: str, url: str, **opts: Any
                 ) -> tuple[Sock, dict[str, Any]]:
    """:func:`join`'s socket, and its connect line."""
    sock = Sock(node, name)
    with trio.fail_after(DEADLINE):
        await sock.connect(url, **opts)
        line = await sock.wait("connect")
    return sock, line


async def queued(url: str, size: int) -> None:
    """Until the server at ``url`` says ``size`` people queue (another process: poll)."""
    with trio.fail_after(DEADLINE):
        while True:
            if (await http_get(url, "/api/status")).json()["queue"]["size"] == size:
                return
            await trio.sleep(0.02)  # another process: poll, under the deadline


async def pair(a: Sock, b: Sock, status_url: str | None = None) -> str:
    """Ann (``a``) queues, then Bob (``b``): matched, Ann first. With ``status_url``,
    Bob asks only once that server shows Ann in the queue. The room's id."""
    with trio.fail_after(DEADLINE):
        assert await a.call("request-room", {"name": "Ann"}) == {"ok": True}
        if status_url is not None:
            await queued(status_url, 1)
        assert await b.call("request-room", {"name": "Bob"}) == {"ok": True}
        room: str = (await a.receive("match-done"))["roomId"]
        await b.receive("match-done")
    return room


def events(sock: Sock, name: str) -> list[dict[str, Any]]:
    """Every line of event ``name`` ``sock`` received, in order."""
    sock.unread()
    return [line for line in sock.log if line.get("type") == "event"
            and line.get("event") == name]
