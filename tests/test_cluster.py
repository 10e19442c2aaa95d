"""Several Live Loop nodes on one real Redis: matching, relays, Next and stop across
nodes, the atomicity proof under concurrency, a node SIGKILLed, and a Redis restart.

Each node is its own ``liveloop serve`` process (tests/cluster.py), so these tests run
on the real clock: every wait is on a client event or a status document under
``trio.fail_after``; no sleep decides an outcome. Clients are Live Loop's Trio client.
"""

from __future__ import annotations

import random
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from liveloop.client import open_client
from liveloop.client.api import (
    AnswerReceived,
    ChatMessage,
    IceCandidateReceived,
    LiveLoopClient,
    Match,
    OfferReceived,
    RemoteStopped,
)
from liveloop.client.socketio import Disconnected

from .cluster import Node, RedisServer, start_nodes
from .conftest import http_get
from .proxy import CuttingProxy

DEADLINE = 15
TIMEOUT = 3
"""LIVELOOP_NODE_TIMEOUT where a test kills something (shorter than the default 5 s; not
so short that a busy test machine stalls a node past it)."""
OFFER = {"type": "offer", "sdp": "v=0\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\n"}
CANDIDATE = {"candidate": "candidate:1 1 udp 1 192.0.2.1 1 typ host", "sdpMid": "0",
             "sdpMLineIndex": 0, "usernameFragment": "f00d"}


@attrs.define
class Cluster:
    redis: RedisServer
    nodes: list[Node]
    stack: AsyncExitStack | None = None
    last_status: dict[str, Any] | None = None
    """The last status document that did not satisfy :meth:`status_until` (diagnostics)."""

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Cluster]:
        """Clients made by :meth:`client` inside are closed at the end (by the task that
        opened them: a test's clients belong to the test's own task)."""
        async with AsyncExitStack() as self.stack:
            yield self

    async def client(self, node: int) -> LiveLoopClient:
        assert self.stack is not None, "inside `async with cluster.session()` only"
        # No deadline around it: the client's nursery outlives this call (pytest's
        # timeout bounds a connect that hangs).
        return await self.stack.enter_async_context(open_client(self.nodes[node].url))

    async def status(self, node: int = 0) -> dict[str, Any]:
        with trio.fail_after(DEADLINE):
            document: dict[str, Any] = (await http_get(self.nodes[node].url,
                                                       "/api/status")).json()
        return document

    async def status_until(self, node: int, want: Any) -> dict[str, Any]:
        with trio.fail_after(DEADLINE):
            while True:
                try:
                    document = await self.status(node)
                except (OSError, ValueError) as error:  # not serving yet
                    document = {"error": repr(error)}
                else:
                    if want(document):
                        return document
                self.last_status = document
                await trio.sleep(0.02)  # other processes: poll, under the deadline


@asynccontextmanager
async def make_cluster(nursery: trio.Nursery, redis: RedisServer, count: int = 3,
                       urls: dict[int, str] | None = None, **env: Any
                       ) -> AsyncIterator[Cluster]:
    env.setdefault("rate_limits", "false")
    # Every test client comes from 127.0.0.1: the per-address limits would refuse them.
    env.setdefault("handshakes_per_ip", 1_000_000)
    env.setdefault("max_connections_per_ip", 1_000_000)
    nodes = await start_nodes(nursery, redis.url, count, urls, **env)
    try:
        yield Cluster(redis, nodes)
    except BaseException:
        for index, node in enumerate(nodes):  # shown by pytest when the test fails
            print(f"--- node {index} log ---\n" + "".join(node.log)[-4000:])
        raise
    finally:
        for node in nodes:
            await node.stop()


@pytest.fixture
async def cluster(nursery: trio.Nursery, redis: RedisServer) -> AsyncIterator[Cluster]:
    """Three nodes, rate limits off, default cooldown (60 s) and node timeout (5 s)."""
    async with make_cluster(nursery, redis) as value:
        yield value


async def pair(cluster: Cluster, first: int, second: int) -> tuple[LiveLoopClient,
                                                                    LiveLoopClient]:
    """A client on node ``first`` queued, then one on ``second``: matched together."""
    a = await cluster.client(first)
    b = await cluster.client(second)
    with trio.fail_after(DEADLINE):
        (await a.request_room("Ann")).raise_for_error()
        await cluster.status_until(second, lambda s: s["queue"]["size"] == 1)
        (await b.request_room("Bob")).raise_for_error()
        match_a = await a.next_match()
        match_b = await b.next_match()
    assert match_a.room_id == match_b.room_id
    assert (match_a.remote_socket_id, match_b.remote_socket_id) == (b.sid, a.sid)
    assert (match_a.remote_name, match_b.remote_name) == ("Bob", "Ann")
    assert match_a.initiator and not match_b.initiator  # Ann waited longer
    return a, b


async def test_match_and_relay_both_ways_across_nodes(cluster: Cluster) -> None:
    async with cluster.session():
        a, b = await pair(cluster, 0, 1)
        document = await cluster.status(2)  # a third node sees the whole service
        assert document["rooms"] == {"active": 1, "total": 1}
        assert document["queue"] == {"size": 0, "users": []}
        with trio.fail_after(DEADLINE):
            (await a.send_offer(OFFER)).raise_for_error()
            offer = await b.wait_for(OfferReceived)
            (await b.send_answer(ANSWER)).raise_for_error()
            answer = await a.wait_for(AnswerReceived)
            (await a.send_ice(CANDIDATE)).raise_for_error()
            (await b.send_ice(None)).raise_for_error()
            assert (await b.wait_for(IceCandidateReceived)).candidate == CANDIDATE
            assert (await a.wait_for(IceCandidateReceived)).candidate is None
            (await b.send_message("hi")).raise_for_error()
            got_a = await a.wait_for(ChatMessage)
            got_b = await b.wait_for(ChatMessage)
        assert offer.offer == OFFER and offer.remote_socket_id == a.sid
        assert offer.remote_name == "Ann"
        assert answer.answer == ANSWER and answer.remote_socket_id == b.sid
        assert got_a == got_b == ChatMessage(b.sid, "hi")


async def test_many_relays_keep_their_order_across_nodes(cluster: Cluster) -> None:
    async with cluster.session():
        a, b = await pair(cluster, 1, 2)
        count = 200
        with trio.fail_after(DEADLINE):
            for i in range(count):
                await a.send_ice({**CANDIDATE, "sdpMLineIndex": i}, ack=False)
            got = [(await b.wait_for(IceCandidateReceived)).candidate for _ in range(count)]
        assert [c["sdpMLineIndex"] for c in got if c is not None] == list(range(count))


async def test_next_across_nodes(cluster: Cluster) -> None:
    async with cluster.session():
        a, b = await pair(cluster, 0, 1)
        with trio.fail_after(DEADLINE):
            (await a.next_partner()).raise_for_error()
            await b.wait_for(RemoteStopped)
            # Both queued again, and kept apart by the cooldown.
            await cluster.status_until(2, lambda s: s["queue"]["size"] == 2)
        c = await cluster.client(2)
        with trio.fail_after(DEADLINE):
            (await c.request_room("Cid")).raise_for_error()
            match_c = await c.next_match()
        # The longer-waiting of the two gets Cid; the other still waits, alone.
        assert match_c.remote_socket_id in (a.sid, b.sid)
        assert match_c.initiator is False
        document = await cluster.status(0)
        assert document["queue"]["size"] == 1
        assert document["rooms"] == {"active": 1, "total": 2}


async def test_stop_across_nodes(cluster: Cluster) -> None:
    async with cluster.session():
        a, b = await pair(cluster, 2, 0)
        room = a.match.room_id if a.match else ""
        with trio.fail_after(DEADLINE):
            # A stop naming another room ends nothing.
            refused = await b.sio.call("stop-call", {"roomId": "not-" + room})
            assert refused[0]["ok"] is False
            (await b.stop_call()).raise_for_error()
            await a.wait_for(RemoteStopped)
            # The partner goes back to the queue; the one who stopped stays idle.
            document = await cluster.status_until(1, lambda s: s["queue"]["size"] == 1)
        assert document["queue"]["users"] == ["Ann"]
        assert document["rooms"]["active"] == 0
        with trio.fail_after(DEADLINE):
            refused = await a.sio.call("negotiation-call-offer", {"offer": OFFER})
        assert refused[0]["error"]["code"] == "not-in-room"


HOLD = 2.0
"""How long a test holds a node's traffic to Redis (see below)."""


@asynccontextmanager
async def held_cluster(nursery: trio.Nursery, redis: RedisServer
                       ) -> AsyncIterator[tuple[Cluster, CuttingProxy]]:
    """Two nodes; node 0 reaches Redis through a proxy the test can hold. Their node
    timeout is long enough (10 s: a heartbeat may wait 5 s) that a hold of HOLD seconds
    never makes node 0 think it is cut off."""
    proxy = CuttingProxy(redis.port)
    port = (await nursery.start(proxy.run)).rsplit(":", 1)[1]
    async with make_cluster(nursery, redis, count=2, node_timeout=10,
                            urls={0: f"redis://127.0.0.1:{port}"}) as cluster, \
            cluster.session():
        yield cluster, proxy


async def while_held(proxy: CuttingProxy, action: Any) -> None:
    """Hold node 0's link to Redis, run ``action``, and release the link when it is
    done or after HOLD seconds, whichever comes first; returns when it is done.

    With acks before Redis has the change (the bug these tests guard against), the
    action's ack, and what it does next, all happen while the link is held. With acks
    after (the fix), the ack waits for the release, and what the test sees is the same
    whatever HOLD is: the wait only decides when the link is released."""
    done = trio.Event()

    async def act() -> None:
        await action()
        done.set()

    proxy.hold()
    async with trio.open_nursery() as inner:
        inner.start_soon(act)
        with trio.move_on_after(HOLD):
            await done.wait()
        proxy.resume()


async def test_an_acked_stop_is_done_before_a_later_request_on_another_node(
        nursery: trio.Nursery, redis: RedisServer) -> None:
    """When a client has its ack, the change is in Redis: Ann, queued on node 0, stops;
    once that is acked, Bob asks on node 1, and must never be paired with her (node 1's
    script would find her still queued if the stop were acked before it ran)."""
    async with held_cluster(nursery, redis) as (cluster, proxy):
        a = await cluster.client(0)
        b = await cluster.client(1)

        async def stop_then_request() -> None:
            (await a.stop_call()).raise_for_error()
            (await b.request_room("Bob")).raise_for_error()  # after Ann's ack

        with trio.fail_after(DEADLINE):
            (await a.request_room("Ann")).raise_for_error()
            await cluster.status_until(1, lambda s: s["queue"]["users"] == ["Ann"])
            await while_held(proxy, stop_then_request)
            document = await cluster.status_until(
                0, lambda s: s["queue"]["users"] == ["Bob"])
        assert document["rooms"] == {"active": 0, "total": 0}


async def test_an_acked_hangup_has_ended_the_room_for_every_node(
        nursery: trio.Nursery, redis: RedisServer) -> None:
    """Ann (node 0) stops her call with Bob (node 1); once that is acked, the room is
    gone for the whole service: node 1's status, read from Redis, says so at once."""
    async with held_cluster(nursery, redis) as (cluster, proxy):
        a, _ = await pair(cluster, 0, 1)
        seen: list[dict[str, Any]] = []

        async def stop_then_look() -> None:
            (await a.stop_call()).raise_for_error()
            seen.append(await cluster.status(1))  # after Ann's ack

        with trio.fail_after(DEADLINE):
            await while_held(proxy, stop_then_look)
        assert seen[0]["rooms"]["active"] == 0


async def test_an_acked_next_is_done_for_every_node(nursery: trio.Nursery,
                                                     redis: RedisServer) -> None:
    """Ann (node 0) presses Next in her call with Bob (node 1); once that is acked, the
    room is gone and Ann is queued, for the whole service."""
    async with held_cluster(nursery, redis) as (cluster, proxy):
        a, _ = await pair(cluster, 0, 1)
        seen: list[dict[str, Any]] = []

        async def next_then_look() -> None:
            (await a.next_partner()).raise_for_error()
            seen.append(await cluster.status(1))  # after Ann's ack

        with trio.fail_after(DEADLINE):
            await while_held(proxy, next_then_look)
        assert seen[0]["rooms"]["active"] == 0
        assert "Ann" in seen[0]["queue"]["users"]


async def test_disconnect_across_nodes_requeues_partner(cluster: Cluster) -> None:
    async with cluster.session():
        a = await cluster.client(0)
        async with open_client(cluster.nodes[1].url) as b:
            with trio.fail_after(DEADLINE):
                await a.request_room("Ann")
                await cluster.status_until(1, lambda s: s["queue"]["size"] == 1)
                await b.request_room("Bob")
                await a.next_match()
        with trio.fail_after(DEADLINE):
            await a.wait_for(RemoteStopped)
            # Ann's node re-queues her after telling her (its script runs after the
            # emit): wait for the queue too, not only for the room's end.
            document = await cluster.status_until(
                2, lambda s: s["rooms"]["active"] == 0 and s["queue"]["size"] > 0)
        assert document["queue"] == {"size": 1, "users": ["Ann"]}


async def test_concurrent_requests_leave_everyone_in_at_most_one_place(
        cluster: Cluster) -> None:
    """The atomicity proof: 3 nodes (3 processes running the scripts at once) and 240
    clients asking together, then Next, stop and disconnect at random, together again.
    Afterwards Redis holds a consistent state, everyone is in at most one place, and
    each room's two members are the two clients whose latest match-done named it."""
    rng = random.Random(11)
    count = 240
    matches: dict[str, list[Match]] = {}
    gone: set[str] = set()
    connected = trio.Event()
    churned = trio.Event()
    checked = trio.Event()
    ready = [0, 0]

    async def collect(client: LiveLoopClient) -> None:
        try:
            async for event in client.events():
                if isinstance(event, Match):
                    matches[client.sid].append(event)
        except Disconnected:
            return

    async def churn(client: LiveLoopClient) -> None:
        await client.request_room(client.sid[:8])
        for _ in range(3):
            await trio.sleep(rng.random() * 0.05)  # spreads the requests; decides nothing
            roll = rng.random()
            if roll < 0.6:
                await client.next_partner()
            elif roll < 0.8:
                await client.stop_call()
                await client.request_room(client.sid[:8])
        if rng.random() < 0.1:
            gone.add(client.sid)
            await client.disconnect()

    async def person(i: int) -> None:
        async with open_client(cluster.nodes[i % 3].url) as client, \
                trio.open_nursery() as inner:
            matches[client.sid] = []
            inner.start_soon(collect, client)
            ready[0] += 1
            if ready[0] == count:
                connected.set()
            await connected.wait()
            await churn(client)
            ready[1] += 1
            if ready[1] == count:
                churned.set()
            await checked.wait()
            inner.cancel_scope.cancel()

    async with trio.open_nursery() as people:
        for i in range(count):
            people.start_soon(person, i)
        with trio.fail_after(90):
            await churned.wait()
            # Settled: everyone still connected is queued or placed again (a partner
            # re-queues after being told, which takes a moment on a busy machine) and
            # two reads agree, and each placed client has had its room's match-done
            # (delivered a moment after the script ran); then the state is checked.
            previous = None
            while True:
                state = await shared_state(cluster)
                told = all(matches.get(sid) and matches[sid][-1].room_id == room_id
                           for room_id, members in state[1].items() for sid in members)
                if state == previous and set(state[2]) == set(matches) - gone and told:
                    break
                previous = state
                await trio.sleep(0.2)  # other processes: poll, under the deadline
        total = (await cluster.status(1))["rooms"]["total"]
        checked.set()

    queued, rooms, records = state
    placed: dict[str, str] = {}
    for room_id, members in rooms.items():
        assert len(set(members)) == 2, f"room {room_id} pairs someone with themselves"
        for sid in members:
            assert sid not in placed, f"{sid} is in two rooms"
            assert sid not in queued, f"{sid} is queued and in a room"
            placed[sid] = room_id
            assert records[sid] == ("r", room_id)
    assert len(set(queued)) == len(queued)
    for sid in queued:
        assert records[sid] == ("q", "")
    assert set(records) == set(placed) | set(queued)
    assert not (set(records) & gone), "a disconnected client is still queued or placed"
    for sid, room_id in placed.items():
        assert matches[sid] and matches[sid][-1].room_id == room_id
    # Everyone still connected is somewhere (all re-asked after their last stop)...
    assert set(records) == set(matches) - gone
    # ...and nobody is left waiting who could be paired: only people cooling down.
    assert len(queued) < 40
    assert total >= count // 2


async def shared_state(cluster: Cluster) -> tuple[list[str], dict[str, tuple[str, str]],
                                                   dict[str, tuple[str, str]]]:
    """The queue (in order), the rooms and the records, read from Redis."""
    import coredis

    client = coredis.Redis.from_url(cluster.redis.url, decode_responses=True)
    async with client:
        queued = list(await client.zrange("ll:q", 0, -1))
        rooms: dict[str, tuple[str, str]] = {}
        async for key in client.scan_iter(match="ll:r:*"):
            room = await client.hgetall(key)
            rooms[key[5:]] = (room["a"], room["b"])
        records: dict[str, tuple[str, str]] = {}
        async for key in client.scan_iter(match="ll:p:*"):
            record = await client.hgetall(key)
            records[key[5:]] = (record["state"], record.get("room", ""))
    return queued, rooms, records


async def test_killed_node_partners_told_in_time(nursery: trio.Nursery,
                                                 redis: RedisServer) -> None:
    # Recovery off: told at once (with it on, after the window: test_recovery_cluster.py).
    async with make_cluster(nursery, redis, node_timeout=TIMEOUT, recovery_window=0
                            ) as cluster, cluster.session():
        a, _ = await pair(cluster, 0, 1)
        lonely = await cluster.client(1)
        with trio.fail_after(DEADLINE):
            (await lonely.request_room("Lon")).raise_for_error()
            await cluster.status_until(0, lambda s: s["queue"]["size"] == 1)
        cluster.nodes[1].kill()
        killed_at = trio.current_time()
        with trio.fail_after(DEADLINE):
            await a.wait_for(RemoteStopped)
        told_after = trio.current_time() - killed_at
        # Declared lost within the timeout; the notice then takes one publish, and the
        # processes may wait for a core (1 s of slack for a loaded machine).
        assert told_after < TIMEOUT + 1, f"told after {told_after:.2f} s"
        # Ann is queued again; the killed node's queued person has left the queue.
        document = await cluster.status_until(2, lambda s: s["queue"]["size"] == 1)
        assert document["queue"]["users"] == ["Ann"]
        assert document["rooms"]["active"] == 0


async def test_redis_restart(nursery: trio.Nursery, redis: RedisServer) -> None:
    """Redis restarted empty: nodes reconnect by themselves; what they had placed there
    is lost, so they drop those clients (which reconnect); new matches work."""
    async with make_cluster(nursery, redis, node_timeout=TIMEOUT) as cluster, cluster.session():
        a, b = await pair(cluster, 0, 1)
        await redis.kill()
        await redis.start()
        with trio.fail_after(DEADLINE):
            for client in (a, b):
                with pytest.raises(Disconnected):
                    while True:
                        await client.receive()
        with trio.fail_after(DEADLINE):
            # Every node has registered again and listens on its channel...
            await nodes_registered(cluster)
        # ...and the new server serves the whole service: status and matching work.
        assert (await cluster.status(2))["rooms"]["total"] == 0
        await pair(cluster, 1, 0)


async def nodes_registered(cluster: Cluster) -> None:
    """Wait until Redis knows every node and every node is subscribed to its channel
    (the nodes register only after dropping what they had)."""
    import coredis

    client = coredis.Redis.from_url(cluster.redis.url, decode_responses=True)
    async with client:
        while True:
            nodes = await client.smembers("ll:nodes")
            listening = await client.pubsub_channels("ll:node:*")
            if len(nodes) == len(cluster.nodes) and {f"ll:node:{n}" for n in nodes} == set(
                    listening):
                return
            await trio.sleep(0.05)  # other processes: poll, under the caller's deadline


async def test_node_that_was_declared_lost_drops_its_clients(nursery: trio.Nursery,
                                                             redis: RedisServer) -> None:
    """A node stalled past the timeout (SIGSTOP) is declared lost like a dead one; when
    it runs again it finds its liveness gone and drops its clients (no split brain).
    Recovery off: the partner is told at the declaration, not after the window."""
    async with make_cluster(nursery, redis, count=2, node_timeout=TIMEOUT,
                            recovery_window=0) as cluster, cluster.session():
        a, b = await pair(cluster, 0, 1)
        node = cluster.nodes[1]
        assert node.process is not None
        node.process.send_signal(signal.SIGSTOP)
        try:
            with trio.fail_after(DEADLINE):
                await a.wait_for(RemoteStopped)
        finally:
            node.process.send_signal(signal.SIGCONT)
        with trio.fail_after(DEADLINE), pytest.raises(Disconnected):
            while True:
                await b.receive()
        # Ann waits alone in the queue; the node is back in service.
        with trio.fail_after(DEADLINE):
            await nodes_registered(cluster)
        document = await cluster.status(1)
        assert document["queue"] == {"size": 1, "users": ["Ann"]}
        assert document["rooms"]["active"] == 0


async def test_node_cut_off_from_redis_drops_its_clients(nursery: trio.Nursery,
                                                          redis: RedisServer) -> None:
    """Redis stalls (SIGSTOP) past the timeout: every node, unable to reach it, drops
    its clients; when Redis runs again the nodes serve again by themselves."""
    async with make_cluster(nursery, redis, count=2, node_timeout=TIMEOUT) as cluster, \
            cluster.session():
        a, b = await pair(cluster, 0, 1)
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)
        try:
            with trio.fail_after(DEADLINE):
                for client in (a, b):
                    with pytest.raises(Disconnected):
                        while True:
                            await client.receive()
        finally:
            redis.process.send_signal(signal.SIGCONT)
        with trio.fail_after(DEADLINE):
            await nodes_registered(cluster)
        await pair(cluster, 1, 0)


UNREACHABLE_TIMEOUT = 30
"""LIVELOOP_NODE_TIMEOUT where a test cuts a node off Redis and waits for its answers: the
node drops its clients only after half of it (15 s) without reaching Redis, far longer
than a refused ack takes even on a busy machine; once Redis is back, a dirty node drops
them at its next heartbeat (timeout/6, 5 s at most)."""


@pytest.mark.parametrize("in_call", [False, True], ids=["queued", "in-a-call"])
async def test_a_change_redis_never_got_is_refused_unavailable(
        nursery: trio.Nursery, redis: RedisServer, in_call: bool) -> None:
    """Node 0's link to Redis is cut, and new connections refused, just before Ann (on
    node 0) stops: waiting in the queue (her Withdraw fails in the node's batch) or in a
    call with Bob on node 1 (her Hangup's LEAVE fails). Her ack is the refusal
    ``unavailable``, not ``{ok: true}``, and ``error-message`` says so; then her
    connection closes. Once Redis takes connections again, node 0 registers afresh at
    its next heartbeat: her old place or call ends. Reconnected, she asks again and is
    served."""
    from liveloop.client.api import ServerError

    proxy = CuttingProxy(redis.port)
    port = (await nursery.start(proxy.run)).rsplit(":", 1)[1]
    async with make_cluster(nursery, redis, count=2, node_timeout=UNREACHABLE_TIMEOUT,
                            urls={0: f"redis://127.0.0.1:{port}"}) as cluster, \
            cluster.session():
        if in_call:
            a, b = await pair(cluster, 0, 1)
        else:
            a = await cluster.client(0)
            with trio.fail_after(DEADLINE):
                (await a.request_room("Ann")).raise_for_error()
        proxy.refusing = True
        assert proxy.cut() > 0
        with trio.fail_after(DEADLINE):
            ack = await a.stop_call()
            error = await a.wait_for(ServerError)
        assert not ack.ok and ack.error is not None
        assert ack.error.code == "unavailable"
        assert (error.code, error.event) == ("unavailable", "stop-call")
        assert error.message == ack.error.message
        with trio.fail_after(DEADLINE), pytest.raises(Disconnected):
            while True:  # closed after the refusal, Redis still out of reach
                await a.receive()
        proxy.refusing = False
        # The node, dirty, registers afresh at its next heartbeat; only then may she ask
        # again (a change before it would be cleared with the rest).
        with trio.fail_after(DEADLINE):
            if in_call:
                await b.wait_for(RemoteStopped)  # the clearing ended the call
            else:
                await queue_emptied(redis)  # her old place is gone
        again = await cluster.client(0)
        with trio.fail_after(DEADLINE):
            (await again.request_room("Ann")).raise_for_error()
            if in_call:  # Bob, re-queued, is paired with her new session
                assert (await again.next_match()).remote_name == "Bob"
            else:  # her old place is gone: she is queued once
                await cluster.status_until(1, lambda s: s["queue"]["users"] == ["Ann"])


async def queued_in_redis(redis: RedisServer) -> list[str]:
    """The socket ids in the shared queue now, read from Redis itself (``/api/status``
    is a snapshot a heartbeat old)."""
    import coredis

    client = coredis.Redis.from_url(redis.url, decode_responses=True)
    async with client:
        return list(await client.zrange("ll:q", 0, -1))


async def queue_emptied(redis: RedisServer) -> None:
    """Until the shared queue is empty (another process changes it: poll)."""
    while True:
        if await queued_in_redis(redis) == []:
            return
        await trio.sleep(0.05)  # without spinning against Redis


# -- a node that rejoins: the order of its steps (no Redis needed) ------------------------


def rejoining_node(steps: list[tuple[str, bool]]) -> tuple[Any, Any]:
    """A node with one client, whose registering and telling are recorded in ``steps``
    with whether the client was still connected then."""
    from liveloop.cluster.node import ClusterMatchmaker
    from liveloop.config import Settings

    from .fakes import FakeSocket

    node = ClusterMatchmaker(Settings(redis_url="redis://127.0.0.1:1"))
    socket = FakeSocket("s1")
    node._sockets["s1"] = socket

    async def register() -> list[Any]:
        steps.append(("register", socket.connected))
        return ["notice"]

    async def apply(notices: list[Any]) -> None:
        steps.append(("apply", socket.connected))

    # Instance attributes shadow the methods, for this node only.
    stand_in: Any = node
    stand_in._register = register
    stand_in._apply = apply
    return node, socket


async def test_a_rejoining_node_clears_before_it_drops_and_tells_after() -> None:
    """Cleared while its client is still there (a reconnect finds no old record to be
    paired with), then dropped, then the clearing's notices go out (the dropped client
    does not first hear its call ended)."""
    steps: list[tuple[str, bool]] = []
    node, socket = rejoining_node(steps)
    await node._rejoin("test")
    assert steps == [("register", True), ("apply", False)]
    assert not socket.connected and node.drops == 1


@pytest.mark.parametrize("why", ["dirty", "declared lost"])
async def test_a_node_that_fails_to_rejoin_still_drops_and_stays_dirty(why: str) -> None:
    steps: list[tuple[str, bool]] = []
    node, socket = rejoining_node(steps)

    async def register() -> list[Any]:
        raise ConnectionError("Redis away again")

    async def heartbeat(name: str, args: Any) -> list[Any]:
        return [0, []]  # not alive: another node declared this one lost

    async def subscribed() -> None:
        pass

    node._register = register
    node._script = heartbeat
    node._check_subscription = subscribed
    node._dirty = why == "dirty"
    with pytest.raises(ConnectionError):
        await node._beat()
    assert not socket.connected  # dropped all the same
    assert node._dirty  # the next beat registers again
