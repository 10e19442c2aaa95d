"""Graceful drain of ``liveloop serve`` on SIGTERM / SIGINT, with real clients.

The server is a child process (signals are the point); the clients are the official npm
``socket.io-client``, reconnection on as in a browser. Every wait is on a client event,
an HTTP answer or the process's exit, under ``trio.fail_after``.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import attrs
import pytest
import trio

from .conftest import DEADLINE, Sock, http_get
from .nodeclient import NodeClient
from .processes import until_draining

CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host",
             "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "f00d"}
OK = {"ok": True}
RECONNECTING = {"reconnection": True, "reconnectionDelay": 50, "reconnectionDelayMax": 200}


@attrs.define
class Server:
    process: trio.Process
    url: str
    log: bytearray

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    async def exit_status(self) -> int:
        with trio.fail_after(DEADLINE):
            return await self.process.wait()

    async def until_draining(self) -> None:
        await until_draining(self.url)


async def _keep_reading(stream: trio.abc.ReceiveStream, log: bytearray) -> None:
    # The pipe must never fill: the server would block on its log.
    async for data in stream:
        log += data


@pytest.fixture
async def start(nursery: trio.Nursery) -> AsyncIterator[Any]:
    servers: list[Server] = []

    async def start(*flags: str) -> Server:
        process: trio.Process = await nursery.start(partial(
            trio.run_process,
            [sys.executable, "-m", "liveloop", "serve", "--bind", "127.0.0.1:0", *flags],
            stderr=subprocess.PIPE, check=False))
        assert process.stderr is not None
        log = bytearray()
        with trio.fail_after(DEADLINE):
            while b"listening on" not in log:
                log += await process.stderr.receive_some(4096)
        nursery.start_soon(_keep_reading, process.stderr, log)
        url = log.split(b"listening on ")[1].split()[0].decode().rstrip(",")
        server = Server(process, url, log)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.process.returncode is None:
            server.process.kill()


async def pair(driver: NodeClient, url: str) -> tuple[Sock, Sock]:
    a, b = Sock(driver, "a"), Sock(driver, "b")
    with trio.fail_after(DEADLINE):
        for sock in (a, b):
            await sock.connect(url, **RECONNECTING)
            assert await sock.call("request-room", {"name": sock.name}) == OK
        await a.wait("event", "match-done")
        await b.wait("event", "match-done")
    return a, b


@contextlib.asynccontextmanager
async def a_call(start: Any, drain_timeout: str
                 ) -> AsyncIterator[tuple[Server, NodeClient, Sock, Sock]]:
    """A server that drains for ``drain_timeout`` seconds after a signal, and a call on
    it (two official clients paired, through ``NodeClient``); no traceback in its log
    at the end."""
    server = await start("--drain-timeout", drain_timeout)
    async with NodeClient("node") as driver:
        a, b = await pair(driver, server.url)
        yield server, driver, a, b
    assert b"Traceback" not in server.log


async def relays(sender: Sock, receiver: Sock) -> None:
    with trio.fail_after(DEADLINE):
        assert await sender.call("send-new-ice-candidates", {"candidate": CANDIDATE}) == OK
        assert await receiver.receive("new-ice-candidates") == {"candidate": CANDIDATE}


async def test_drain_keeps_calls_and_sends_the_rest_elsewhere(start: Any) -> None:
    async with a_call(start, "600") as (server, driver, a, b):
        idle = Sock(driver, "idle")
        queued = Sock(driver, "queued")
        with trio.fail_after(DEADLINE):
            await idle.connect(server.url, **RECONNECTING)
            await queued.connect(server.url, transports=["websocket"], **RECONNECTING)
            assert await queued.call("request-room", {"name": "q"}) == OK

        server.signal(signal.SIGTERM)
        with trio.fail_after(DEADLINE):
            for sock in (idle, queued):
                # The transport closed (not a DISCONNECT): the client reconnects by
                # itself, and its attempts are refused while this node drains.
                gone = await sock.wait("disconnect")
                assert gone["reason"] == "transport close"
                await sock.wait("connect_error")
        assert (await http_get(server.url, "/readyz")).status == 503
        assert (await http_get(server.url, "/")).status == 200
        handshake = await http_get(server.url, "/socket.io/?EIO=4&transport=polling")
        assert handshake.status == 503

        await relays(a, b)  # the call goes on
        await relays(b, a)
        assert server.process.returncode is None
        with trio.fail_after(DEADLINE):
            assert await a.call("stop-call") == OK
            await b.wait("event", "stop-by-remote-user")
            for sock in (a, b):  # its end lets both go
                assert (await sock.wait("disconnect"))["reason"] == "transport close"
        assert await server.exit_status() == 0


async def test_calls_are_closed_at_the_drain_timeout(start: Any) -> None:
    async with a_call(start, "0.5") as (server, _, a, b):
        server.signal(signal.SIGINT)
        with trio.fail_after(DEADLINE):
            for sock in (a, b):
                assert (await sock.wait("disconnect"))["reason"] == "transport close"
        assert await server.exit_status() == 0


async def test_a_second_signal_stops_at_once(start: Any) -> None:
    async with a_call(start, "600") as (server, _, a, b):
        server.signal(signal.SIGTERM)
        await server.until_draining()
        await relays(a, b)
        server.signal(signal.SIGTERM)
        assert await server.exit_status() == 0  # long before the 600 s


async def test_a_polling_client_is_let_go_too(start: Any) -> None:
    """python-socketio over long-polling: its pending GET ends with the session's CLOSE,
    and the server exits once it is gone."""
    server = await start("--drain-timeout", "600")
    async with NodeClient("python") as driver:
        idle = Sock(driver, "idle")
        with trio.fail_after(DEADLINE):
            await idle.connect(server.url, transports=["polling"], reconnection=True)
        server.signal(signal.SIGTERM)
        with trio.fail_after(DEADLINE):
            await idle.wait("disconnect")
        assert await server.exit_status() == 0
    assert b"Traceback" not in server.log
