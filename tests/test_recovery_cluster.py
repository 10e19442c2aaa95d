"""Connection state recovery when the reconnect lands on another node or worker.

Real processes on a real redis-server (tests/cluster.py), the official npm
``socket.io-client`` (tests/js). The person who is cut reaches the service through
:class:`~tests.proxy.CuttingProxy`; the test points the proxy at another node before the
client reconnects (a balancer that moved it), or, under ``liveloop serve --workers 2``,
lets the workers' turns hand the new handshake to the other worker.

Their partner keeps sending throughout (each message acked before the next), so the
move happens while relays are in flight: every message must arrive once, in order, and
the partner must never hear of the cut. Waits are on client events under
``trio.fail_after``; ``trio.sleep`` only paces what the partner sends.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
import trio

from .cluster import RedisServer
from .conftest import CANDIDATE, DEADLINE, Sock, events, http_get, join, joined, pair, queued
from .nodeclient import NodeClient
from .processes import liveloop_process
from .proxy import CuttingProxy
from .test_cluster import make_cluster


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def behind_proxy(nursery: trio.Nursery, node: NodeClient, url: str
                       ) -> tuple[CuttingProxy, Sock, dict[str, Any]]:
    """Socket "a", the person who is cut: it reaches ``url`` through a proxy that the
    test cuts and points elsewhere (a balancer), WebSocket only, back soon after a cut;
    and its connect line."""
    proxy = CuttingProxy(port_of(url))
    proxied = await nursery.start(proxy.run)
    a, line = await joined(node, "a", proxied, transports=["websocket"], reconnection=True,
                           reconnectionDelay=100, reconnectionDelayMax=200)
    return proxy, a, line


def texts(sock: Sock) -> list[str]:
    """The chat lines ``sock`` received, in order."""
    return [line["args"][0]["message"] for line in events(sock, "Message:recived")]


def told(sock: Sock) -> list[str]:
    """Events that would tell ``sock`` its partner went or a new call began."""
    sock.unread()
    return [line["event"] for line in sock.log if line.get("type") == "event"
            and line.get("event") in ("stop-by-remote-user", "match-done")]


class Sender:
    """The partner, sending numbered chat lines one after another (each acked)."""

    def __init__(self, sock: Sock) -> None:
        self.sock = sock
        self.sent: list[str] = []
        self.stop = trio.Event()

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            text = f"m{n}"
            assert await self.sock.call("newMessage", {"message": text, "id": text}) \
                == {"ok": True}
            self.sent.append(text)
            n += 1
            await trio.sleep(0.01)  # pacing only


def from_(sock: Sock) -> Any:
    return lambda line: line["args"][0].get("from") == sock.sid


async def flowing(a: Sock, sender: Sender, more: int = 20) -> None:
    """Until ``sender`` has sent ``more`` lines after now (``a`` reading meanwhile)."""
    with trio.fail_after(DEADLINE):
        count = len(sender.sent)
        while len(sender.sent) < count + more:
            await a.wait("event", "Message:recived")


async def caught_up(a: Sock, sender: Sender) -> None:
    """Until ``a`` has received as many chat lines as were sent (each was acked)."""
    with trio.fail_after(DEADLINE):
        while len(texts(a)) < len(sender.sent):
            await a.wait("event", "Message:recived")


async def moved_recovery(a: Sock, proxy: CuttingProxy, to_port: int | None) -> dict[str, Any]:
    """Cut ``a``'s transport, optionally point the proxy elsewhere, let it reconnect;
    the new connect line."""
    with trio.fail_after(DEADLINE):
        proxy.refusing = True
        proxy.cut()
        await a.wait("disconnect")
        if to_port is not None:
            proxy.target = to_port
        proxy.refusing = False
        return await a.wait("connect")


@pytest.mark.parametrize("partner_on", ["old node", "new node", "third node"])
async def test_the_official_client_recovers_on_another_node(
        nursery: trio.Nursery, redis: RedisServer, node: NodeClient, partner_on: str) -> None:
    async with make_cluster(nursery, redis, 3) as cluster:
        old, new = cluster.nodes[0].url, cluster.nodes[1].url
        partner_url = {"old node": old, "new node": new,
                       "third node": cluster.nodes[2].url}[partner_on]
        proxy, a, _ = await behind_proxy(nursery, node, old)
        b = await join(node, "b", partner_url, transports=["websocket"])
        room = await pair(a, b, partner_url)
        sender = Sender(b)
        async with trio.open_nursery() as sending:
            sending.start_soon(sender.run)
            with trio.fail_after(DEADLINE):
                await a.wait("event", "Message:recived")  # the stream flows
            line = await moved_recovery(a, proxy, port_of(new))
            assert line["recovered"] is True and line["sid"] == a.sid
            await flowing(a, sender)  # relays keep flowing to the person on the new node
            sender.stop.set()
        await caught_up(a, sender)
        # Every message once, in order, across the move.
        assert texts(a) == sender.sent
        assert proxy.connections == 2
        # The person is in the same call on the new node: relays go both ways.
        with trio.fail_after(DEADLINE):
            assert await a.call("send-new-ice-candidates",
                              {"roomId": room, "candidate": CANDIDATE}) == {"ok": True}
            await b.wait("event", "new-ice-candidates")
            assert await a.call("newMessage", {"message": "back"}) == {"ok": True}
            await b.wait("event", "Message:recived", from_(a))
        assert told(b) == ["match-done"]  # the partner never heard of the cut
        # Stop from the moved person reaches the partner (the room moved in Redis too).
        with trio.fail_after(DEADLINE):
            assert await a.call("stop-call", {"roomId": room}) == {"ok": True}
            await b.wait("event", "stop-by-remote-user")


async def test_recovery_under_two_workers(nursery: trio.Nursery, redis: RedisServer,
                                          node: NodeClient) -> None:
    env = {"LIVELOOP_REDIS_URL": redis.url, "LIVELOOP_RATE_LIMITS": "false",
           "LIVELOOP_HANDSHAKES_PER_IP": "1000000",
           "LIVELOOP_MAX_CONNECTIONS_PER_IP": "1000000"}
    async with liveloop_process("serve", "--workers", "2", env=env) as running:
        proxy, a, first = await behind_proxy(nursery, node, running.url)
        b = await join(node, "b", running.url, transports=["websocket"])
        await pair(a, b, running.url)
        workers = [first["engine_sid"][0]]
        sender = Sender(b)
        async with trio.open_nursery() as sending:
            sending.start_soon(sender.run)
            # Whichever worker reads a handshake hands it to the workers in turn (its own
            # turn alternates), so no more than two in a row land on one worker: four
            # reconnects in a row see both.
            for _ in range(4):
                line = await moved_recovery(a, proxy, None)
                assert line["recovered"] is True and line["sid"] == a.sid
                workers.append(line["engine_sid"][0])
                with trio.fail_after(DEADLINE):
                    await a.wait("event", "Message:recived")
            sender.stop.set()
        await caught_up(a, sender)
        assert len(set(workers)) == 2, workers  # some recovery moved to the other worker
        assert texts(a) == sender.sent
        assert told(b) == ["match-done"]
        with trio.fail_after(DEADLINE):
            assert await a.call("newMessage", {"message": "back"}) == {"ok": True}
            await b.wait("event", "Message:recived", from_(a))


# -- a lost node, recovery on --------------------------------------------------------

TIMEOUT = 3
"""LIVELOOP_NODE_TIMEOUT in the SIGKILL tests (as in test_cluster.py)."""


async def test_killed_node_partner_told_only_after_the_window(
        nursery: trio.Nursery, redis: RedisServer, node: NodeClient) -> None:
    window = 3
    async with make_cluster(nursery, redis, 2, node_timeout=TIMEOUT,
                            recovery_window=window) as cluster:
        a = await join(node, "a", cluster.nodes[0].url, transports=["websocket"])
        b = await join(node, "b", cluster.nodes[1].url, transports=["websocket"])
        await pair(a, b, cluster.nodes[1].url)
        cluster.nodes[0].kill()
        killed_at = trio.current_time()
        with trio.fail_after(TIMEOUT + window + DEADLINE):
            await b.wait("event", "stop-by-remote-user")
        told_after = trio.current_time() - killed_at
        # Away for the window from when the node was declared lost (within the timeout
        # of the kill), then told, as if the person had left: at the first heartbeat
        # after the window (timeout/6), with slack for a loaded machine.
        assert window <= told_after < TIMEOUT + window + 2, f"told after {told_after:.2f} s"
        await queued(cluster.nodes[1].url, 1)  # re-queued


async def lost_in_redis(redis: RedisServer, sid: str) -> None:
    """Until ``sid``'s record says its node was declared lost (another process: poll)."""
    import coredis

    client = coredis.Redis.from_url(redis.url, decode_responses=True)
    async with client:
        with trio.fail_after(TIMEOUT + DEADLINE):
            while True:
                if await client.hget(f"ll:p:{sid}", "away") == "lost":
                    return
                await trio.sleep(0.05)


async def test_back_on_another_node_after_its_node_was_killed(
        nursery: trio.Nursery, redis: RedisServer, node: NodeClient) -> None:
    async with make_cluster(nursery, redis, 2, node_timeout=TIMEOUT,
                            recovery_window=TIMEOUT * 4) as cluster:
        proxy, a, _ = await behind_proxy(nursery, node, cluster.nodes[0].url)
        b = await join(node, "b", cluster.nodes[1].url, transports=["websocket"])
        room = await pair(a, b, cluster.nodes[1].url)
        proxy.target = port_of(cluster.nodes[1].url)  # where the client comes back
        proxy.refusing = True  # not before the partner has sent what it will miss
        cluster.nodes[0].kill()
        await lost_in_redis(redis, a.sid)
        # Declared lost: the partner's node now keeps what it relays to the person.
        with trio.fail_after(DEADLINE):
            for n in range(3):
                assert await b.call("newMessage", {"message": f"away {n}"}) == {"ok": True}
        proxy.refusing = False
        with trio.fail_after(TIMEOUT * 3 + DEADLINE):
            line = await a.wait("connect")
        assert line["recovered"] is True and line["sid"] == a.sid
        assert any("reclaimed" in text for text in cluster.nodes[1].log)  # from Redis
        with trio.fail_after(DEADLINE):
            while len(texts(a)) < 3:
                await a.wait("event", "Message:recived")
        assert texts(a) == ["away 0", "away 1", "away 2"]
        # In the same call, now on the surviving node: relays both ways, and stop.
        with trio.fail_after(DEADLINE):
            assert await b.call("newMessage", {"message": "still there?"}) == {"ok": True}
            await a.wait("event", "Message:recived", from_(b))
            assert await a.call("newMessage", {"message": "yes"}) == {"ok": True}
            await b.wait("event", "Message:recived", from_(a))
        assert told(b) == ["match-done"]
        with trio.fail_after(DEADLINE):
            assert await b.call("stop-call", {"roomId": room}) == {"ok": True}
            await a.wait("event", "stop-by-remote-user")


async def test_a_queued_person_keeps_their_place_away_and_on_another_node(
        nursery: trio.Nursery, redis: RedisServer, node: NodeClient) -> None:
    async with make_cluster(nursery, redis, 2) as cluster:
        old, new = cluster.nodes[0].url, cluster.nodes[1].url
        proxy, a, _ = await behind_proxy(nursery, node, old)
        with trio.fail_after(DEADLINE):
            assert await a.call("request-room", {"name": "Ann"}) == {"ok": True}
            await queued(new, 1)
            proxy.refusing = True
            proxy.cut()
            await a.wait("disconnect")
        # Away: nobody is paired with Ann; Cat queues behind her.
        c = await join(node, "c", new, transports=["websocket"])
        with trio.fail_after(DEADLINE):
            assert await c.call("request-room", {"name": "Cat"}) == {"ok": True}
            await queued(new, 2)
        proxy.target = port_of(new)
        proxy.refusing = False
        with trio.fail_after(DEADLINE):
            line = await a.wait("connect")
            assert line["recovered"] is True and line["sid"] == a.sid
            # Back, on the other node, in her place: paired with Cat, Ann first.
            match = await a.receive("match-done")
            assert match["remoteUserDetails"]["socket"] == c.sid and match["initiator"]
            assert (await c.receive("match-done"))["remoteUserDetails"]["socket"] == a.sid
            assert await c.call("newMessage", {"message": "hi Ann"}) == {"ok": True}
            await a.wait("event", "Message:recived", from_(c))


async def test_a_silent_connection_recovers_on_another_node(
        nursery: trio.Nursery, redis: RedisServer, node: NodeClient) -> None:
    """Nothing is closed: the client finds out by its heartbeat and reconnects to the
    other node, whether or not the old node has noticed yet (if not, the claim closes
    the old connection there)."""
    async with make_cluster(nursery, redis, 2, ping_interval=1, ping_timeout=1) as cluster:
        old, new = cluster.nodes[0].url, cluster.nodes[1].url
        proxy, a, _ = await behind_proxy(nursery, node, old)
        b = await join(node, "b", new, transports=["websocket"])
        await pair(a, b, new)
        sender = Sender(b)
        async with trio.open_nursery() as sending:
            sending.start_soon(sender.run)
            with trio.fail_after(DEADLINE):
                await a.wait("event", "Message:recived")
                proxy.target = port_of(new)
                proxy.go_silent()
                line = await a.wait("connect")
            assert line["recovered"] is True and line["sid"] == a.sid
            await flowing(a, sender)
            sender.stop.set()
        await caught_up(a, sender)
        assert texts(a) == sender.sent
        assert told(b) == ["match-done"]


async def test_a_client_of_a_draining_node_recovers_on_another(
        nursery: trio.Nursery, redis: RedisServer, node: NodeClient) -> None:
    """SIGTERM: the node drains (calls go on until the drain timeout). A client of it
    that is cut comes back through the balancer to another node, which claims its
    record from the draining one."""
    async with make_cluster(nursery, redis, 2, drain_timeout=600) as cluster:
        old, new = cluster.nodes[0], cluster.nodes[1].url
        proxy, a, _ = await behind_proxy(nursery, node, old.url)
        b = await join(node, "b", new, transports=["websocket"])
        room = await pair(a, b, new)
        assert old.process is not None
        old.process.send_signal(signal.SIGTERM)
        with trio.fail_after(DEADLINE):
            # The draining node refuses new sessions: the balancer sends them on.
            while True:
                answer = await http_get(old.url, "/socket.io/?EIO=4&transport=polling")
                if answer.status == 503:
                    break
                await trio.sleep(0.05)  # another process: poll, under the deadline
        line = await moved_recovery(a, proxy, port_of(new))
        assert line["recovered"] is True and line["sid"] == a.sid
        with trio.fail_after(DEADLINE):
            assert await b.call("newMessage", {"message": "drained"}) == {"ok": True}
            await a.wait("event", "Message:recived", from_(b))
            assert await a.call("stop-call", {"roomId": room}) == {"ok": True}
            await b.wait("event", "stop-by-remote-user")
        assert told(b) == ["match-done", "stop-by-remote-user"]
