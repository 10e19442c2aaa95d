"""docs/deploy.md's nginx configuration, for real: Debian's nginx in front of two
``liveloop serve`` processes on one Redis, and the official npm client in its default
mode (polling, then the upgrade to WebSocket) matched across the two and relaying.

The nginx configuration is the documented one (read from docs/deploy.md between its
markers) with only the addresses changed: the upstream servers are the two nodes, and it
listens on a free loopback port. Around it the test adds what running it unprivileged in
a temporary prefix needs (pid, logs, temp paths) and an access log of which upstream
served which client address.

nginx hashes the client's address, and loopback clients all come from 127.0.0.1, so
each client gets its own source address (127.0.0.x, through the npm client's
``localAddress`` and an ``http.Agent`` with it). Which node an address hashes to
depends on the ports, so the test first probes addresses with one request each and
takes two that reach different nodes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import h11
import pytest
import trio

from .cluster import RedisServer, free_port, need_redis
from .conftest import DEADLINE, Sock
from .nodeclient import NodeClient
from .processes import Running, liveloop_process

DOCS = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
_BLOCK = re.compile(r"<!-- nginx-begin -->\n```nginx\n(.*?)```\n<!-- nginx-end -->", re.S)
OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\n"}
CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host",
             "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "f00d"}


def documented_config() -> str:
    """The nginx configuration docs/deploy.md gives."""
    found = _BLOCK.search(DOCS.read_text())
    assert found, "docs/deploy.md lost its nginx block markers"
    return found.group(1)


def our_config(documented: str, listen: int, upstreams: list[str]) -> str:
    """The documented configuration with the test's addresses: the upstream servers
    replaced by ``upstreams`` (host:port), and ``listen`` on 127.0.0.1."""
    servers = re.findall(r"^\s*server \S+:\d+ (.*);$", documented, re.M)
    assert len(servers) == 2, "the documented upstream has two servers"
    lines = [f"    server {address} {servers[0]};" for address in upstreams]
    config, count = re.subn(r"(?:^\s*server \S+:\d+ .*;\n)+", "\n".join(lines) + "\n",
                            documented, count=1, flags=re.M)
    assert count == 1
    config, count = re.subn(r"^(\s*)listen 80;$", rf"\1listen 127.0.0.1:{listen};",
                            config, flags=re.M)
    assert count == 1
    return config


def need_nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no nginx: .ci/run installs Debian's")
        pytest.skip("nginx is not installed")
    return found


@attrs.frozen
class Nginx:
    url: str
    access_log: Path

    def requests(self) -> list[tuple[str, str, str]]:
        """(client address, upstreams, request line) of every request logged so far."""
        lines = self.access_log.read_text().splitlines()
        return [(client, upstream, request) for client, upstream, request
                in (line.split("|", 2) for line in lines)]

    def upstreams(self) -> dict[str, set[str]]:
        """Client address -> the upstreams that served its requests."""
        seen: dict[str, set[str]] = {}
        for client, upstream, _ in self.requests():
            seen.setdefault(client, set()).update(u.strip() for u in upstream.split(","))
        return seen


@pytest.fixture
async def deployment(nursery: trio.Nursery, tmp_path: Path
                     ) -> AsyncIterator[tuple[Nginx, list[Running]]]:
    binary = need_nginx()
    redis = RedisServer(nursery, need_redis())
    await redis.start()
    env = {"LIVELOOP_REDIS_URL": redis.url}
    async with liveloop_process("serve", env=env) as one, \
            liveloop_process("serve", env=env) as two:
        port = free_port()
        upstreams = [node.url.removeprefix("http://") for node in (one, two)]
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        access = prefix / "access.log"
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log info;\nevents {{ worker_connections 256; }}\n"
            "http {\n"
            f"  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n"
            f"  fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n"
            f"  scgi_temp_path {prefix}/scgi;\n"
            "  log_format upstream '$remote_addr|$upstream_addr|$request';\n"
            f"  access_log {access} upstream;\n"
            + our_config(documented_config(), port, upstreams) + "}\n")
        command = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                   "-e", str(prefix / "error.log")]
        checked = await trio.run_process([*command, "-t"], capture_stderr=True, check=False)
        assert checked.returncode == 0, checked.stderr.decode()
        process = await trio.lowlevel.open_process(command, stdin=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            with trio.fail_after(DEADLINE):
                while True:  # nginx reports nothing when ready: its port answers
                    try:
                        await get_from("127.0.0.1", url, "/")
                        break
                    except OSError:
                        await trio.sleep(0.05)
            yield Nginx(url, access), [one, two]
        finally:
            process.terminate()  # SIGTERM: nginx's fast shutdown
            with trio.fail_after(DEADLINE):
                await process.wait()
            await redis.stop()


async def get_from(source: str, url: str, target: str) -> int:
    """``GET target`` on ``url``'s host:port from the local address ``source``; the
    status, once the server has closed the connection (so nginx has logged it)."""
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
        status = 0
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.ConnectionClosed):
                return status
            elif isinstance(event, h11.EndOfMessage):
                http.receive_data(await stream.receive_some(65536))  # b"": closed


async def test_default_client_matched_and_relaying_across_two_nodes_behind_nginx(
        deployment: tuple[Nginx, list[Running]]) -> None:
    nginx, nodes = deployment
    node_addresses = {node.url.removeprefix("http://") for node in nodes}
    # Two client addresses that nginx sends to different nodes.
    chosen: dict[str, str] = {}
    with trio.fail_after(DEADLINE):
        for last in range(2, 200):
            source = f"127.0.0.{last}"
            assert await get_from(source, nginx.url, "/") == 200
            (upstream,) = nginx.upstreams()[source]
            chosen.setdefault(upstream, source)
            if len(chosen) == 2:
                break
    assert set(chosen) == node_addresses
    (a_node, a_source), (b_node, b_source) = chosen.items()

    async with NodeClient("node") as driver:
        a, b = Sock(driver, "a"), Sock(driver, "b")
        with trio.fail_after(DEADLINE):
            for sock, source in ((a, a_source), (b, b_source)):
                await sock.connect(nginx.url, local_address=source,
                                   agent={"keepAlive": True, "localAddress": source})
                await sock.wait("upgrade")  # the default: polling, then WebSocket
            request = {"roomId": None, "userImage": ""}
            assert await a.call("request-room", {**request, "name": "Ann"}) == {"ok": True}
            assert await b.call("request-room", {**request, "name": "Bob"}) == {"ok": True}
            match_a = await a.receive("match-done")
            match_b = await b.receive("match-done")
            assert match_b["roomId"] == match_a["roomId"]
            assert {match_a["initiator"], match_b["initiator"]} == {True, False}
            assert match_a["remoteUserDetails"]["socket"] == b.sid
            assert match_b["remoteUserDetails"]["socket"] == a.sid
            # Relays both ways across the two nodes: offer, answer, ICE, chat.
            assert await a.call("negotiation-call-offer", {"offer": OFFER}) == {"ok": True}
            assert (await b.receive("negotiation-call-offer"))["offer"] == OFFER
            assert await b.call("negotiation-call-answer", {"ans": ANSWER}) == {"ok": True}
            assert (await a.receive("negotiation-call-answer"))["ans"] == ANSWER
            for sender, receiver in ((a, b), (b, a)):
                assert await sender.call("send-new-ice-candidates",
                                         {"candidate": CANDIDATE}) == {"ok": True}
                assert await receiver.receive("new-ice-candidates") == {"candidate": CANDIDATE}
                assert await sender.call("newMessage", {"message": f"hi from {sender.name}"}
                                         ) == {"ok": True}
                expected = {"from": sender.sid, "message": f"hi from {sender.name}"}
                assert await receiver.receive("Message:recived") == expected
                assert await sender.receive("Message:recived") == expected
        for sock in (a, b):
            assert not [line for line in sock.log if line["type"] == "disconnect"]
    # Every request of each client went to its own node: polling, then the upgrade.
    # nginx logs a WebSocket when it closes, after the clients have gone.
    with trio.fail_after(DEADLINE):
        while True:
            if sum("transport=websocket" in line for _, _, line in nginx.requests()) == 2:
                break
            await trio.sleep(0.05)  # another process's file: nothing to wait on
    seen = nginx.upstreams()
    assert seen[a_source] == {a_node}
    assert seen[b_source] == {b_node}
    for source in (a_source, b_source):
        targets = [request for client, _, request in nginx.requests() if client == source]
        assert any("transport=polling" in target for target in targets)
        assert any("transport=websocket" in target for target in targets)
