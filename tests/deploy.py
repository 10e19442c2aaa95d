"""What the deployment tests (``test_deploy_nginx.py``, ``test_deploy_haproxy.py``)
share: docs/deploy.md's configurations, two ``liveloop serve`` nodes on one real Redis,
requests from chosen loopback source addresses, and the scenarios every balancer must
pass with the official npm client.

A balancer hashes the client's address, and loopback clients all come from 127.0.0.1,
so each client gets its own source address (127.0.0.x, through the npm client's
``localAddress`` and an ``http.Agent`` with it). Which node an address hashes to depends
on the ports, so :func:`sources_per_node` first probes addresses with one request each
and takes one per node.

The tests at the end are every balancer's: ``test_deploy_<balancer>.py`` imports them
(``__all__``) and gives them its ``deployment`` fixture.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import h11
import pytest
import trio

from liveloop.config import Settings

from .cluster import running_redis
from .conftest import DEADLINE, Sock, http_get, receive_response
from .nodeclient import NodeClient
from .processes import Running, liveloop_process, until_draining

DOCS = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\n"}
CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host",
             "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "f00d"}
OK = {"ok": True}
DRAIN_TIMEOUT = 60
"""Seconds a node's calls may go on after SIGTERM: a node told to stop in a test drains
for as long as its call lasts, well within this."""


def documented_config(language: str, marker: str | None = None, doc: Path = DOCS) -> str:
    """The ``language`` configuration ``doc`` (docs/deploy.md) gives, between its
    ``<!-- marker-begin -->`` and ``<!-- marker-end -->`` markers (``marker``: the
    language, unless named)."""
    marker = marker or language
    block = re.compile(rf"<!-- {marker}-begin -->\n```{language}\n(.*?)```\n"
                       rf"<!-- {marker}-end -->", re.S)
    found = block.search(doc.read_text())
    assert found, f"{doc.name} lost its {marker} block markers"
    return found.group(1)


def beyond_ping_deadline(seconds: float) -> bool:
    """Whether a balancer's idle timeout of ``seconds`` outlasts the longest silence of a
    healthy session: a ping interval plus a ping timeout, by default."""
    settings = Settings()
    return seconds > settings.ping_interval + settings.ping_timeout


def replace_once(pattern: str, replacement: str, text: str) -> str:
    """``text`` with the one line ``pattern`` matches replaced."""
    replaced, count = re.subn(pattern, replacement, text, flags=re.M)
    assert count == 1, f"{pattern!r} matched {count} lines of the documented configuration"
    return replaced


@attrs.frozen
class Logged:
    """One request a balancer logged: the client's address, the node that answered it
    (``host:port``), whether another node was tried first, and the request line."""

    client: str
    upstream: str
    retried: bool
    request: str


@attrs.frozen
class Balancer:
    """A running balancer: its URL, and the requests it has logged so far."""

    url: str
    logged: Callable[[], list[Logged]]

    def upstreams(self) -> dict[str, set[str]]:
        """Client address -> the nodes that answered its requests."""
        seen: dict[str, set[str]] = {}
        for line in self.logged():
            seen.setdefault(line.client, set()).add(line.upstream)
        return seen

    async def until_logged(self, count: int, text: str, client: str | None = None
                           ) -> list[Logged]:
        """Until ``count`` logged request lines contain ``text`` (from ``client``, if
        given); those lines. A balancer logs a request when it has ended (a WebSocket
        when it closes), perhaps after the client saw the connection close, and its log
        is another process's file or pipe: nothing to wait on but its content."""
        with trio.fail_after(DEADLINE):
            while True:
                found = [line for line in self.logged() if text in line.request
                         and client in (None, line.client)]
                if len(found) >= count:
                    return found
                await trio.sleep(0.05)


@contextlib.asynccontextmanager
async def two_nodes(nursery: trio.Nursery) -> AsyncIterator[list[Running]]:
    """Two ``liveloop serve`` on one fresh redis-server, draining for
    ``DRAIN_TIMEOUT`` after a SIGTERM."""
    async with running_redis(nursery) as redis:
        env = {"LIVELOOP_REDIS_URL": redis.url, "LIVELOOP_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)}
        async with liveloop_process("serve", env=env) as one, \
                liveloop_process("serve", env=env) as two:
            yield [one, two]


def address(node: Running) -> str:
    return node.url.removeprefix("http://")


def need_program(name: str) -> str:
    """The path of Debian's ``name`` (on PATH or in /usr/sbin); the test is skipped
    without it, and fails in CI, where ``./dev test`` installs it."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"no {name}: ./dev test installs Debian's")
        pytest.skip(f"{name} is not installed")
    return found


@contextlib.asynccontextmanager
async def balancer_process(check: list[str], run: list[str], url: str, output: Path,
                           log: Path, parse: Callable[[str], list[Logged]]
                           ) -> AsyncIterator[Balancer]:
    """The balancer ``run`` starts (in the foreground, its stdout and stderr into
    ``output``), once ``check`` has accepted its configuration, and once ``url``
    answers; its requests are ``parse`` of what ``log`` holds. SIGTERM at the end."""
    checked = await trio.run_process(check, capture_stdout=True, capture_stderr=True,
                                     check=False)
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()
    with output.open("ab") as into:
        process = await trio.lowlevel.open_process(
            run, stdin=subprocess.DEVNULL, stdout=into, stderr=into)
    try:
        balancer = Balancer(url, lambda: parse(log.read_text(errors="replace")))
        with trio.fail_after(DEADLINE):
            while True:  # a balancer reports nothing when it is ready: its port answers
                try:
                    await get_from("127.0.0.1", url, "/")
                    break
                except OSError:
                    await trio.sleep(0.05)
        yield balancer
    finally:
        process.terminate()
        with trio.fail_after(DEADLINE):
            await process.wait()


async def get_from(source: str, url: str, target: str) -> int:
    """``GET target`` on ``url``'s host:port from the local address ``source``; the
    status, once the server has closed the connection (so the balancer has logged it)."""
    host, port = url.removeprefix("http://").split(":")
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    async with stream:
        http = h11.Connection(h11.CLIENT)
        await stream.send_all(http.send(h11.Request(
            method="GET", target=target, headers=[("Host", host), ("Connection", "close")]))
            + http.send(h11.EndOfMessage()))
        status = (await receive_response(http, stream)).status
        assert await stream.receive_some(65536) == b""  # then the balancer closes
        return status


async def sources_per_node(balancer: Balancer, nodes: list[Running]) -> dict[str, str]:
    """Node address -> a client address (127.0.0.x) that the balancer sends to it."""
    chosen: dict[str, str] = {}
    with trio.fail_after(DEADLINE):
        for last in range(2, 200):
            source = f"127.0.0.{last}"
            assert await get_from(source, balancer.url, "/") == 200
            (logged,) = await balancer.until_logged(1, "GET / ", source)
            upstream = logged.upstream
            chosen.setdefault(upstream, source)
            if len(chosen) == len(nodes):
                break
    assert set(chosen) == {address(node) for node in nodes}
    return chosen


async def connect_from(sock: Sock, url: str, source: str, options: Mapping[str, Any]
                       ) -> None:
    """``sock`` connected through ``url`` from ``source``, on the transport it ends on."""
    await sock.connect(url, local_address=source,
                       agent={"keepAlive": True, "localAddress": source}, **options)
    if "transports" not in options:
        await sock.wait("upgrade")  # the default: polling, then WebSocket


async def match(a: Sock, b: Sock) -> None:
    """``a`` and ``b`` ask for a room, in that order, and are matched together."""
    request = {"roomId": None, "userImage": ""}
    assert await a.call("request-room", {**request, "name": "Ann"}) == OK
    assert await b.call("request-room", {**request, "name": "Bob"}) == OK
    match_a = await a.receive("match-done")
    match_b = await b.receive("match-done")
    assert match_b["roomId"] == match_a["roomId"]
    assert {match_a["initiator"], match_b["initiator"]} == {True, False}
    assert match_a["remoteUserDetails"]["socket"] == b.sid
    assert match_b["remoteUserDetails"]["socket"] == a.sid


async def relay(a: Sock, b: Sock) -> None:
    """Relays both ways between partners: offer, answer, ICE, chat."""
    assert await a.call("negotiation-call-offer", {"offer": OFFER}) == OK
    assert (await b.receive("negotiation-call-offer"))["offer"] == OFFER
    assert await b.call("negotiation-call-answer", {"ans": ANSWER}) == OK
    assert (await a.receive("negotiation-call-answer"))["ans"] == ANSWER
    for sender, receiver in ((a, b), (b, a)):
        assert await sender.call("send-new-ice-candidates", {"candidate": CANDIDATE}) == OK
        assert await receiver.receive("new-ice-candidates") == {"candidate": CANDIDATE}
        assert await sender.call("newMessage", {"message": f"hi from {sender.name}"}) == OK
        expected = {"from": sender.sid, "message": f"hi from {sender.name}"}
        assert await receiver.receive("Message:recived") == expected
        assert await sender.receive("Message:recived") == expected


TRANSPORTS: dict[str, dict[str, Any]] = {
    "default": {},  # polling, then the upgrade to WebSocket
    "websocket": {"transports": ["websocket"]},
}


# The tests every balancer passes: a test module imports them (``from .deploy import *``:
# pytest then collects them there) and defines the ``deployment`` fixture they run on.

__all__ = ["test_a_draining_nodes_handshakes_are_retried_on_the_other",
           "test_official_client_matched_and_relaying_across_two_nodes"]

Deployment = tuple[Balancer, list[Running]]
"""What the ``deployment`` fixture gives: the balancer, and its two nodes."""


@pytest.mark.parametrize("transports", list(TRANSPORTS))
async def test_official_client_matched_and_relaying_across_two_nodes(
        deployment: Deployment, transports: str) -> None:
    """Two official clients (in the mode ``transports`` names), each from an address the
    balancer sends to another node, are matched together and relay both ways; every
    request of each went to its own node."""
    balancer, nodes = deployment
    options = TRANSPORTS[transports]
    (a_node, a_source), (b_node, b_source) = (await sources_per_node(balancer, nodes)).items()
    async with NodeClient("node") as driver:
        a, b = Sock(driver, "a"), Sock(driver, "b")
        with trio.fail_after(DEADLINE):
            await connect_from(a, balancer.url, a_source, options)
            await connect_from(b, balancer.url, b_source, options)
            await match(a, b)
            await relay(a, b)
        for sock in (a, b):
            assert not [line for line in sock.log if line["type"] == "disconnect"]
    await balancer.until_logged(2, "transport=websocket")
    seen = balancer.upstreams()
    assert seen[a_source] == {a_node}
    assert seen[b_source] == {b_node}
    for source in (a_source, b_source):
        targets = [line.request for line in balancer.logged() if line.client == source]
        assert any("transport=websocket" in target for target in targets)
        if "transports" not in options:
            assert any("transport=polling" in target for target in targets)


async def test_a_draining_nodes_handshakes_are_retried_on_the_other(
        deployment: Deployment) -> None:
    """A node told to stop (SIGTERM) answers handshakes 503 while its calls go on: the
    balancer retries those on the other node, and the calls' own requests still reach
    the draining node."""
    balancer, nodes = deployment
    (a_node, a_source), (b_node, _) = (await sources_per_node(balancer, nodes)).items()
    draining = next(node for node in nodes if address(node) == a_node)
    async with NodeClient("node") as driver:
        a, b = Sock(driver, "a"), Sock(driver, "b")
        with trio.fail_after(DEADLINE):
            for sock in (a, b):  # both on the node that will drain: a call keeps it up
                await connect_from(sock, balancer.url, a_source, TRANSPORTS["default"])
            await match(a, b)
            draining.process.send_signal(signal.SIGTERM)
            await until_draining(draining.url)
            handshake = "/socket.io/?EIO=4&transport=polling"
            assert (await http_get(draining.url, handshake)).status == 503
            assert await get_from(a_source, balancer.url, handshake) == 200
            await relay(a, b)  # the call goes on, on the draining node
            assert draining.process.returncode is None
    with trio.fail_after(DEADLINE):  # the call ended with its clients: drained
        assert await draining.process.wait() == 0
    (retried,) = await balancer.until_logged(1, f"GET {handshake} ")
    assert (retried.client, retried.upstream, retried.retried) == (a_source, b_node, True)
    assert {line.upstream for line in balancer.logged() if line.client == a_source
            and "sid=" in line.request} == {a_node}
