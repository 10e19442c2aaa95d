"""``liveloop serve --workers N``: every request reaches the worker that owns its session.

The server runs as a real process tree (``liveloop conformance --workers 2``: the
official suites' echo app, which needs no shared state), and is reached by

- a raw HTTP/1.1 client that sends requests for both workers' sessions on one
  kept-alive connection (what a per-connection sticky balancer gets wrong), and
- the official npm client in polling-only mode, every socket sharing one kept-alive
  ``http.Agent``, so requests of sessions of both workers share connections.

Whichever worker reads a handshake, handshakes take turns over the workers, so any two
consecutive ones make sessions on both.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import h11
import pytest
import trio

from liveloop.server.routing import NEW, TAGS, Handoff, owner_of, tag_sid

from .conftest import DEADLINE, Sock, receive_response
from .nodeclient import NodeClient
from .processes import Running, liveloop_process

_PASSED = re.compile(r"worker (\d+) stopped; it passed (\d+) requests")


def test_sid_tags_name_their_worker() -> None:
    paths = frozenset({"/socket.io"})
    for worker in (0, 1, 63):
        sid = tag_sid("x" * 20, worker)
        assert len(sid) == 20
        assert owner_of(f"/socket.io/?EIO=4&transport=polling&sid={sid}".encode(),
                        paths, 64) == worker
    assert owner_of(b"/socket.io/?EIO=4&transport=polling&sid=Bxyz", paths, 2) == 1
    assert owner_of(b"/socket.io/?EIO=4&transport=polling", paths, 2) == NEW
    # Nothing to route: another path, a worker that does not exist, junk.
    assert owner_of(b"/api/status?sid=Bxyz", paths, 2) is None
    assert owner_of(b"/socket.io/?sid=Cxyz", paths, 2) is None
    assert owner_of(b"/socket.io/?sid=%FF%FE", paths, 2) is None
    assert owner_of(b"/socket.io/?sid=", paths, 2) is None
    assert owner_of(b"/socket.io/?sid=\xff", paths, 2) is None
    assert TAGS.index("B") == 1


def test_handshakes_take_turns_from_the_worker_that_reads_them() -> None:
    paths = frozenset({"/socket.io"})
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        handoff = Handoff(1, a, [b, None, b])
        handshake = b"/socket.io/?EIO=4&transport=polling"
        assert [handoff.route(handshake, paths) for _ in range(4)] == [1, 2, 0, 1]
        assert handoff.route(b"/socket.io/?EIO=4&transport=polling&sid=Cxyz", paths) == 2
        assert handoff.route(b"/", paths) == 1


@pytest.fixture
async def two_workers() -> AsyncIterator[Running]:
    async with liveloop_process("conformance", "--workers", "2") as running:
        yield running


def passed_requests(running: Running) -> dict[int, int]:
    """Per worker, the requests it passed to the other (logged when it stopped)."""
    return {int(w): int(n) for w, n in _PASSED.findall(running.text())}


class Http:
    """A kept-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self._stream = stream
        self._host = host
        self._http = h11.Connection(h11.CLIENT)

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        http = self._http
        headers = [("Host", self._host), ("Content-Length", str(len(body)))]
        data = http.send(h11.Request(method=method, target=target, headers=headers))
        data += http.send(h11.Data(data=body)) if body else b""
        await self._stream.send_all(data + http.send(h11.EndOfMessage()))
        response = await receive_response(http, self._stream)
        assert http.our_state is http.their_state is h11.IDLE, "the connection closed"
        return response.status, response.body


async def connect(url: str) -> Http:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return Http(await trio.open_tcp_stream(parts.hostname, parts.port), parts.netloc)


POLLING = "/socket.io/?EIO=4&transport=polling"


async def test_one_kept_alive_connection_serves_sessions_of_both_workers(
        two_workers: Running) -> None:
    sids: dict[str, str] = {}
    with trio.fail_after(DEADLINE):
        http = await connect(two_workers.url)  # one connection for everything
        for _ in range(2):  # handshakes take turns: one session on each worker
            status, body = await http.request("GET", POLLING)
            assert status == 200 and body.startswith(b"0")
            sid = json.loads(body[1:])["sid"]
            sids[sid[0]] = sid
        assert set(sids) == {"A", "B"}
        for sid in sids.values():
            assert await http.request("POST", f"{POLLING}&sid={sid}", b"40") == (200, b"ok")
            status, body = await http.request("GET", f"{POLLING}&sid={sid}")
            assert status == 200 and body.startswith(b"40{")
        for round_ in range(3):
            for tag, sid in sids.items():
                text = f'42["message","{tag}{round_}"]'.encode()
                assert await http.request("POST", f"{POLLING}&sid={sid}", text) == (200, b"ok")
                assert await http.request("GET", f"{POLLING}&sid={sid}") == (
                    200, f'42["message-back","{tag}{round_}"]'.encode())
        # Anything else is served wherever the connection is.
        assert (await http.request("GET", "/nothing"))[0] == 404
        status, body = await http.request("GET", f"{POLLING}&sid=Bunknown")
        assert status == 400 and json.loads(body) == {"code": 1, "message": "Session ID unknown"}
    two_workers.process.terminate()
    with trio.fail_after(DEADLINE):
        await two_workers.process.wait()
    passed = passed_requests(two_workers)
    assert set(passed) == {0, 1}
    assert sum(passed.values()) >= 9  # at least one in two requests moved


async def test_npm_polling_clients_on_one_kept_alive_agent(two_workers: Running) -> None:
    agent = {"keepAlive": True}  # one http.Agent for every socket: shared connections
    async with NodeClient("node") as driver:
        socks: list[Sock] = []
        workers: list[str] = []
        with trio.fail_after(DEADLINE):
            for i in range(6):
                sock = Sock(driver, f"s{i}")
                reply = await sock.connect(two_workers.url, transports=["polling"],
                                           agent=agent)
                assert reply["transport"] == "polling"
                workers.append(reply["engine_sid"][0])
                socks.append(sock)
        # Handshakes take turns, whichever worker reads them: 3 sessions on each.
        assert sorted(workers) == ["A"] * 3 + ["B"] * 3

        async def chat(sock: Sock, round_: int) -> None:
            got = await driver.emit("message-with-ack", sock.name, round_, ack=True,
                                    socket=sock.name)
            assert got == [sock.name, round_]
            await driver.emit("message", sock.name, round_, socket=sock.name)

        for round_ in range(5):  # several ping cycles (300 ms) of the echo app
            with trio.fail_after(DEADLINE):
                async with trio.open_nursery() as nursery:  # all at once: shared sockets
                    for sock in socks:
                        nursery.start_soon(chat, sock, round_)
                for sock in socks:  # one reader of the driver's lines at a time
                    line = await sock.wait("event", "message-back")
                    assert line["args"] == [sock.name, round_]
        for sock in socks:
            assert not [line for line in sock.log if line["type"] == "disconnect"]
            state = await driver.request("state", socket=sock.name)
            assert state["connected"] and state["transport"] == "polling"


async def test_bad_requests_get_an_answer_and_the_workers_go_on(two_workers: Running) -> None:
    parts = urlsplit(two_workers.url)
    assert parts.hostname is not None and parts.port is not None
    with trio.fail_after(DEADLINE):
        for raw, status in ((b"NOT HTTP AT ALL\r\n\r\n", b"400"),
                            # a head still unfinished past 16 KiB
                            (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000, b"431")):
            stream = await trio.open_tcp_stream(parts.hostname, parts.port)
            async with stream:
                await stream.send_all(raw)
                answer = bytearray()
                while chunk := await stream.receive_some(65536):  # then it closes
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
        http = await connect(two_workers.url)
        status, body = await http.request("GET", POLLING)
        assert status == 200 and body.startswith(b"0{")
