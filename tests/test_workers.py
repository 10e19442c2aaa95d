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

import pytest
import trio

from liveloop.bench.http1 import KeptAlive
from liveloop.metrics import Metrics
from liveloop.server.asgi import Receive, Scope, Send
from liveloop.server.http1 import RoutedConnection
from liveloop.server.routing import NEW, TAGS, Handoff, owner_of, tag_sid

from .cluster import RedisServer, need_redis
from .conftest import DEADLINE, Sock, http_get
from .nodeclient import NodeClient
from .processes import Running, liveloop_process
from .test_metrics import Samples, samples, value

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
    """The echo app on two workers: pings every 0.3 s as the suites have them, but a
    pong may take 10 s rather than 0.2 s, so that a loaded machine cannot end a session
    by chance (a 0.2 s pong deadline was missed at load average 14)."""
    async with liveloop_process("conformance", "--workers", "2",
                                env={"LIVELOOP_PING_TIMEOUT": "10"}) as running:
        yield running


def passed_requests(running: Running) -> dict[int, int]:
    """Per worker, the requests it passed to the other (logged when it stopped)."""
    return {int(w): int(n) for w, n in _PASSED.findall(running.text())}


async def connect(url: str) -> KeptAlive:
    """One kept-alive connection to ``url`` (a server closing it fails the next request)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return await KeptAlive.open(parts.hostname, parts.port)


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
        for raw, code in ((b"NOT HTTP AT ALL\r\n\r\n", b"400"),
                          # a head still unfinished past 16 KiB
                          (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000, b"431")):
            stream = await trio.open_tcp_stream(parts.hostname, parts.port)
            async with stream:
                await stream.send_all(raw)
                answer = bytearray()
                while chunk := await stream.receive_some(65536):  # then it closes
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 " + code), answer[:80]
        http = await connect(two_workers.url)
        status, body = await http.request("GET", POLLING)
        assert status == 200 and body.startswith(b"0{")


# -- the routed loop's limits, and one metrics listener per worker -----------------------


async def _read_to_end(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes."""
    answer = bytearray()
    while chunk := await stream.receive_some(65536):
        answer += chunk
    return bytes(answer)


async def test_routed_loop_counts_a_first_head_that_times_out(autojump_clock: object) -> None:
    """As the one-process front door: a connection whose first head is not whole within
    the header timeout is closed and counted ``header_timeout``; a kept-alive one idle
    after a request, or one another worker passed here, is closed and not counted."""
    metrics = Metrics(enabled=True)

    def refused() -> float | None:
        return metrics.registry.get_sample_value("liveloop_refused_total",
                                                 {"limit": "header_timeout"})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    with a, b:
        routed = RoutedConnection(app, frozenset({"/socket.io"}), Handoff(0, a, [None, b]),
                                  5.0, lambda *_: None, metrics)

        async def exchange(sent: bytes, passed: bytes = b"") -> tuple[bytes, float]:
            async with trio.open_nursery() as nursery:
                client = await trio.open_tcp_stream("127.0.0.1", port)
                server = await listeners[0].accept()

                async def serve() -> None:
                    async with server:  # as the front door's handle closes it
                        await routed.serve(server, passed)

                nursery.start_soon(serve)
                start = trio.current_time()
                async with client:
                    await client.send_all(sent)
                    answer = await _read_to_end(client)
                elapsed = trio.current_time() - start
            return answer, elapsed

        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        answer, elapsed = await exchange(b"GET / HTTP/1.1\r\nHost: x\r\n")  # unfinished
        assert answer == b"" and elapsed == pytest.approx(5.0)
        assert refused() == 1
        answer, elapsed = await exchange(request)  # then idle, kept alive
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
        assert elapsed == pytest.approx(5.0)
        answer, _ = await exchange(b"", passed=request)  # as another worker passes it
        assert answer.startswith(b"HTTP/1.1 200")
        assert refused() == 1
    await listeners[0].aclose()


def consecutive_free_ports() -> int:
    """A port P with P and P + 1 free on 127.0.0.1 now (two workers' metrics)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two consecutive free ports")


async def scrape_worker(url: str) -> Samples:
    with trio.fail_after(DEADLINE):
        response = await http_get(url, "/metrics")
    assert response.status == 200
    return samples(response.body.decode())


async def test_each_worker_has_its_own_metrics_and_limits(nursery: trio.Nursery) -> None:
    """``--workers 2`` with ``LIVELOOP_METRICS_BIND=HOST:P``: worker i serves its own
    metrics on P + i, counting what it served; the routed loop's body and header
    timeouts answer and count as in one process."""
    redis = RedisServer(nursery, need_redis())
    await redis.start()
    port = consecutive_free_ports()
    env = {"LIVELOOP_REDIS_URL": redis.url, "LIVELOOP_METRICS_BIND": f"127.0.0.1:{port}",
           "LIVELOOP_BODY_TIMEOUT": "1", "LIVELOOP_HEADER_TIMEOUT": "2"}
    metrics = [f"http://127.0.0.1:{port + index}" for index in range(2)]
    try:
        async with liveloop_process("serve", "--workers", "2", env=env) as running:
            parts = urlsplit(running.url)
            assert parts.hostname is not None and parts.port is not None
            # Each worker logs where its metrics are once they are served (worker 1 may
            # still be starting).
            lines = [f"metrics of worker {index} on {url}" for index, url in enumerate(metrics)]
            with trio.fail_after(DEADLINE):
                while True:
                    if all(line in running.text() for line in lines):
                        break
                    await trio.sleep(0.05)  # another process: poll, under the deadline
            with trio.fail_after(DEADLINE):
                http = await connect(running.url)
                sids = []
                for _ in range(3):  # taking turns: two on one worker, one on the other
                    status, body = await http.request("GET", POLLING)
                    assert status == 200
                    sids.append(json.loads(body[1:])["sid"])
                await http.aclose()
            counts = [sum(sid[0] == TAGS[index] for sid in sids) for index in range(2)]
            assert sorted(counts) == [1, 2]
            found = [await scrape_worker(url) for url in metrics]
            for index in range(2):
                assert value(found[index], "liveloop_handshakes_total") == counts[index]
                assert value(found[index], "liveloop_connections",
                             transport="polling") == counts[index]

            # A polling POST whose body does not come: 408 from its session's worker,
            # whichever worker read the head, and counted there.
            owner = TAGS.index(sids[0][0])
            with trio.fail_after(DEADLINE):
                stream = await trio.open_tcp_stream(parts.hostname, parts.port)
                async with stream:
                    await stream.send_all(
                        f"POST {POLLING}&sid={sids[0]} HTTP/1.1\r\nHost: x\r\n"
                        "Content-Length: 100\r\n\r\n4".encode())
                    answer = await _read_to_end(stream)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
            # A head that never ends: closed, counted by whichever worker accepted it.
            with trio.fail_after(DEADLINE):
                stream = await trio.open_tcp_stream(parts.hostname, parts.port)
                async with stream:
                    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                    assert await _read_to_end(stream) == b""
            found = [await scrape_worker(url) for url in metrics]
            assert [value(found[index], "liveloop_refused_total", limit="body_timeout")
                    for index in range(2)] == [int(index == owner) for index in range(2)]
            assert sum(value(found[index], "liveloop_refused_total",
                             limit="header_timeout") for index in range(2)) == 1
    finally:
        await redis.stop()
