"""The Lua scripts of liveloop.cluster.scripts, one step at a time, on a real Redis.

Each test calls the scripts as a node would, and checks their answers (the notices) and
the keys they leave. Time never decides anything here: an ended cooldown is made by
deleting its key and setting ``wake`` in the past, as the clock would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from liveloop.cluster import notices as wire
from liveloop.cluster import scripts
from liveloop.cluster.notices import EndNotice, MatchNotice, MovedNotice

from .cluster import RedisServer

P = "t:"


class Scripts:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._scripts = {name: client.register_script(getattr(scripts, name))
                         for name in scripts.NAMES}

    async def run(self, name: str, *args: object) -> Any:
        return await self._scripts[name](keys=[P], args=[str(a) for a in args])

    async def enqueue(self, sid: str, node: str = "n1", ticket: int = 1,
                      room: str | None = None, max_queue: int = 100, pid: str = ""
                      ) -> tuple[str, list[Any]]:
        outcome, found = await self.run("ENQUEUE", sid, node, sid.upper(), "", ticket,
                                        max_queue, room or f"room-{sid}", 200, pid)
        return outcome, wire.from_script(found)

    async def leave(self, sid: str, room: str = "") -> list[Any]:
        return wire.from_script(await self.run("LEAVE", sid, room))

    async def cool(self, a: str, b: str) -> None:
        first, second = sorted((a, b))
        await self.client.set(f"{P}c:{first}|{second}", "1", px=60_000)

    async def queue(self) -> list[str]:
        return list(await self.client.zrange(f"{P}q", 0, -1))

    async def record(self, sid: str) -> dict[str, str]:
        return dict(await self.client.hgetall(f"{P}p:{sid}"))


@pytest.fixture
async def lua(redis: RedisServer) -> AsyncIterator[Scripts]:
    import coredis

    client = coredis.Redis.from_url(redis.url, decode_responses=True)
    async with client:
        yield Scripts(client)


def match(sid: str, node: str, ticket: int, room: str, partner: str, partner_node: str,
          initiator: bool) -> MatchNotice:
    return MatchNotice(sid, node, ticket, room, partner, partner_node, partner.upper(), "",
                       initiator)


def matches(notices: Sequence[object]) -> list[MatchNotice]:
    """``notices``, every one of them a match."""
    found = [notice for notice in notices if isinstance(notice, MatchNotice)]
    assert len(found) == len(notices), notices
    return found


async def test_queue_then_pair_first_come_first_served(lua: Scripts) -> None:
    assert await lua.enqueue("a", ticket=1) == ("queued", [])
    assert await lua.enqueue("a", ticket=2) == ("already", [])  # idempotent
    assert (await lua.record("a"))["ticket"] == "2"  # the newest request answers
    assert (await lua.enqueue("b", "n2", ticket=5))[0] == "paired"
    # b arrived second: paired with a, who waited longer and starts the call.
    assert await lua.queue() == []
    room = (await lua.record("a"))["room"]
    assert await lua.record("b") == {"state": "r", "room": room, "node": "n2",
                                     "ticket": "5"}
    assert await lua.client.hgetall(f"{P}r:{room}") == {"a": "a", "an": "n1", "b": "b",
                                                        "bn": "n2"}


async def test_pairing_notices_name_both_nodes(lua: Scripts) -> None:
    await lua.enqueue("a", "n1", ticket=3)
    outcome, found = await lua.enqueue("b", "n2", ticket=4, room="R")
    assert outcome == "paired"
    assert found == [match("a", "n1", 3, "R", "b", "n2", True),
                     match("b", "n2", 4, "R", "a", "n1", False)]
    status = await lua.run("STATUS", 10)
    assert status == [0, 1, 1]


async def test_cooldown_skips_to_the_next_in_line(lua: Scripts) -> None:
    await lua.enqueue("a")
    await lua.cool("a", "b")
    assert await lua.enqueue("b") == ("queued", [])  # never with a while cooling
    outcome, found = await lua.enqueue("c", room="R")
    assert outcome == "paired"
    assert [(n.sid, n.partner) for n in found] == [("a", "c"), ("c", "a")]
    assert await lua.queue() == ["b"]


async def test_sweep_pairs_people_whose_cooldown_ended(lua: Scripts) -> None:
    await lua.enqueue("a")
    await lua.cool("a", "b")
    await lua.enqueue("b")
    assert await lua.run("SWEEP", 200, "R1") == []  # still cooling: not due
    # The cooldown ends (its key expires) and its time has come.
    await lua.client.delete([f"{P}c:a|b"])
    await lua.client.set(f"{P}wake", "1")
    found = matches(wire.from_script(await lua.run("SWEEP", 200, "R1")))
    assert [(n.sid, n.room_id, n.initiator) for n in found] == [("a", "R1", True),
                                                                ("b", "R1", False)]
    assert await lua.queue() == []


async def test_next_ends_the_room_and_queues_the_caller(lua: Scripts) -> None:
    await lua.enqueue("a", "n1")
    await lua.enqueue("b", "n2", room="R")
    await lua.cool("a", "b")
    outcome, found = await lua.enqueue("a", "n1", ticket=2)
    assert (outcome, found) == ("queued", [EndNotice("b", "n2", "R")])
    assert await lua.queue() == ["a"]
    assert await lua.record("b") == {}  # idle until its node queues it again
    assert not await lua.client.exists([f"{P}r:R"])
    assert await lua.enqueue("b", "n2", ticket=2) == ("queued", [])  # cooling with a


async def test_leave_checks_the_room_id(lua: Scripts) -> None:
    await lua.enqueue("a", "n1")
    await lua.enqueue("b", "n2", room="R")
    assert await lua.leave("a", "not-R") == []  # a stop naming another room
    assert await lua.leave("c", "R") == []  # not a member
    assert (await lua.record("a"))["room"] == "R"
    assert await lua.leave("a", "R") == [EndNotice("b", "n2", "R")]
    assert await lua.leave("b", "R") == []  # both leaving at once: once only
    assert await lua.record("a") == {} and await lua.record("b") == {}
    assert await lua.run("STATUS", 10) == [0, 0, 1]


async def test_withdraw_leaves_the_queue_or_the_room(lua: Scripts) -> None:
    await lua.enqueue("a")
    assert await lua.leave("a") == []
    assert await lua.queue() == [] and await lua.record("a") == {}
    await lua.enqueue("a", "n1")
    await lua.enqueue("b", "n2", room="R")
    assert await lua.leave("b") == [EndNotice("a", "n1", "R")]
    assert not await lua.client.smembers(f"{P}n:n1")


async def test_queue_full_is_refused(lua: Scripts) -> None:
    await lua.cool("a", "b")
    await lua.enqueue("a", max_queue=2)
    await lua.enqueue("b", max_queue=2)
    assert await lua.enqueue("c", max_queue=2) == ("full", [])
    assert await lua.record("c") == {}


async def test_heartbeat_declares_a_silent_node_lost(lua: Scripts) -> None:
    assert await lua.run("HEARTBEAT", "n1", 60_000, 1) == [1, []]
    assert await lua.run("HEARTBEAT", "n2", 60_000, 1) == [1, []]
    await lua.enqueue("q1", "n1")
    await lua.cool("q1", "x")
    await lua.cool("q1", "y")
    await lua.enqueue("x", "n1")
    await lua.enqueue("y", "n2", room="R")
    assert await lua.queue() == ["q1"]
    await lua.client.delete([f"{P}alive:n1"])  # n1 stops refreshing: its key expires
    alive, found = await lua.run("HEARTBEAT", "n2", 60_000, 0)
    assert alive == 1
    assert wire.from_script(found) == [EndNotice("y", "n2", "R")]
    assert await lua.queue() == []  # n1's queued person left the queue
    assert set(await lua.client.smembers(f"{P}nodes")) == {"n2"}
    # n1 comes back: it learns it was declared lost (and must drop its clients).
    assert await lua.run("HEARTBEAT", "n1", 60_000, 0) == [0, []]


async def test_registering_again_clears_what_the_node_left(lua: Scripts) -> None:
    await lua.run("HEARTBEAT", "n1", 60_000, 1)
    await lua.run("HEARTBEAT", "n2", 60_000, 1)
    await lua.enqueue("x", "n1")
    await lua.enqueue("y", "n2", room="R")
    await lua.client.delete([f"{P}alive:n1"])
    alive, found = await lua.run("HEARTBEAT", "n1", 60_000, 1)
    assert alive == 1 and wire.from_script(found) == [EndNotice("y", "n2", "R")]


def test_notices_round_trip() -> None:
    for notice in (match("a", "n1", 7, "R", "b", "n2", True), EndNotice("a", "n1", "R"),
                   wire.DeliverNotice("a", "n1", "R", "new-ice-candidates",
                                      '["new-ice-candidates",{"x":[1],"é":"\\ud800"}]'),
                   wire.ClaimNotice("n1.a.pid", "n1", "t", "n2", "/"),
                   wire.HandoverNotice("n2", "t", ["pid", "a", "/", 3, [], {"phase": "idle"}]),
                   MovedNotice("b", "n2", "R", "a", "n3"), wire.FenceNotice("a", "n1", "R"),
                   wire.LostNotice("b", "n2", "R", "a"),
                   wire.ForwardedNotice("a", "n2", wire.encode(EndNotice("a", "n2", "R")))):
        assert wire.decode(wire.encode(notice)) == notice
    with pytest.raises(wire.BadNotice):
        wire.decode("[\"M\", 1]")
    with pytest.raises(wire.BadNotice):
        wire.decode("not json")


def test_resp_commands_and_replies() -> None:
    from liveloop.cluster import resp

    assert resp.command("PUBLISH", "ch", "é") == (
        b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$2\r\n\xc3\xa9\r\n")
    assert resp.address("redis://127.0.0.1:7000/0") == ("127.0.0.1", 7000, b"")
    assert resp.address("redis://u:p%40ss@h") == ("h", 6379, resp.command("AUTH", "u", "p@ss"))
    assert resp.address("rediss://h:1") is None
    replies = resp.Replies()
    assert replies.feed(b":1\r\n:0") == []
    assert replies.feed(b"\r\n-ERR no\r\n+OK\r\n") == ["ERR no"]
    assert replies.count == 4


def _push(items: list[bytes | int]) -> bytes:
    out = b"*%d\r\n" % len(items)
    for item in items:
        out += b":%d\r\n" % item if isinstance(item, int) else (
            b"$%d\r\n%s\r\n" % (len(item), item))
    return out


@given(st.lists(st.lists(st.binary(max_size=40) | st.integers(-5, 10**6), min_size=1,
                         max_size=4), max_size=6),
       st.lists(st.integers(0, 400), max_size=8))
def test_resp_pushes_are_read_whatever_the_reads_split(
        pushes: list[list[bytes | int]], cuts: list[int]) -> None:
    """What a subscribed connection receives (the raw subscriber's parser): every push,
    in order, however the bytes arrive, binary data (CR LF inside) included."""
    from liveloop.cluster import resp

    data = b"+OK\r\n" + b"".join(_push(push) for push in pushes)
    parser = resp.Pushes()
    got: list[list[bytes | int]] = []
    start = 0
    for cut in [*sorted({min(cut, len(data)) for cut in cuts}), len(data)]:
        got += parser.feed(data[start:cut])
        start = cut
    assert got == [[b"+OK"], *pushes]


def test_resp_pushes_refuse_errors_and_oversized_strings() -> None:
    from liveloop.cluster import resp

    with pytest.raises(resp.ReplyError, match="NOAUTH"):
        resp.Pushes().feed(b"-NOAUTH Authentication required.\r\n")
    with pytest.raises(resp.ReplyError, match="bytes"):
        resp.Pushes().feed(b"*1\r\n$%d\r\n" % (resp.MAX_BULK + 1))
    with pytest.raises(resp.ReplyError, match="type"):
        resp.Pushes().feed(b"$3\r\nabc\r\n")


async def test_match_notice_after_its_rooms_end_is_followed_by_the_end(
        nursery: trio.Nursery) -> None:
    """Two nodes' notices are not ordered with each other: when a room's end arrives
    before its match, the person is told both, in the order they happened."""
    from liveloop.cluster.node import ClusterMatchmaker
    from liveloop.config import Settings
    from liveloop.messages import Matched, RoomEnded

    from .fakes import FakeSocket

    node = ClusterMatchmaker(Settings(redis_url="redis://unused"))
    node._nursery = nursery
    socket = FakeSocket("x")
    node._sockets["x"] = socket
    here = node.node_id

    def received(notice: wire.Notice) -> None:
        node._received(wire.encode(notice))

    received(EndNotice("x", here, "R"))
    received(match("x", here, 1, "R", "y", "elsewhere", False))
    got = [socket.receive.receive_nowait().message for _ in range(2)]  # type: ignore[union-attr]
    assert isinstance(got[0], RoomEnded)  # ignored by a peer not in R yet
    assert isinstance(got[1], Matched) and got[1].room_id == "R"
    ended = socket.receive.receive_nowait().message  # type: ignore[union-attr]
    assert ended == RoomEnded("R", requeue=True)
    assert got[1].inbox.statistics().open_receive_channels == 0  # the room is closed


async def test_match_with_a_partner_gone_from_this_node_still_reaches_the_person(
        nursery: trio.Nursery) -> None:
    """The partner disconnected here just before the match was applied: the person is
    still told of the match (the partner's withdrawal then ends the room for them)."""
    from liveloop.cluster.node import ClusterMatchmaker
    from liveloop.config import Settings
    from liveloop.messages import Matched

    from .fakes import FakeSocket

    node = ClusterMatchmaker(Settings(redis_url="redis://unused"))
    node._nursery = nursery
    socket = FakeSocket("x")
    node._sockets["x"] = socket
    here = node.node_id
    node._received(wire.encode(match("x", here, 1, "R", "y", here, True)))
    matched = socket.receive.receive_nowait().message  # type: ignore[union-attr]
    assert isinstance(matched, Matched) and matched.partner.sid == "y"


async def test_away_people_keep_their_place_and_are_not_paired(lua: Scripts) -> None:
    await lua.enqueue("a")
    assert await lua.run("AWAY", "a") == []
    assert (await lua.record("a"))["away"] == "1"
    assert await lua.enqueue("b") == ("queued", [])  # not with a, who is away
    outcome, found = await lua.enqueue("c", room="R1")  # with b, skipping a
    assert outcome == "paired" and {n.sid for n in found} == {"b", "c"}
    assert await lua.queue() == ["a"]  # a kept their place
    assert await lua.run("RETURN", "a", "R2", 200) == []  # back; nobody to pair with
    assert "away" not in await lua.record("a")
    outcome, found = await lua.enqueue("d", room="R3")
    assert outcome == "paired" and [(n.sid, n.initiator) for n in found] == [
        ("a", True), ("d", False)]


async def test_sweep_skips_away_people_and_return_pairs_them(lua: Scripts) -> None:
    await lua.enqueue("a")
    await lua.cool("a", "b")
    await lua.enqueue("b")
    await lua.run("AWAY", "a")
    await lua.client.delete([f"{P}c:a|b"])  # the cooldown ends while a is away
    await lua.client.set(f"{P}wake", "1")
    assert await lua.run("SWEEP", 200, "R1") == []
    assert await lua.queue() == ["a", "b"]
    # Back: paired at once with b, a (who waited longer) starting the call.
    found = matches(wire.from_script(await lua.run("RETURN", "a", "R2", 200)))
    assert [(n.sid, n.room_id, n.initiator) for n in found] == [("a", "R2", True),
                                                                ("b", "R2", False)]
    assert await lua.run("AWAY", "a") == []  # in a room: nothing to mark
    assert "away" not in await lua.record("a")


async def test_move_points_the_record_the_room_and_the_partner_at_the_new_node(
        lua: Scripts) -> None:
    await lua.enqueue("a", "n1")
    await lua.enqueue("b", "n2", room="R")
    found = wire.from_script(await lua.run("MOVE", "a", "n3"))
    assert found == [MovedNotice("b", "n2", "R", "a", "n3")]
    assert (await lua.record("a"))["node"] == "n3"
    assert (await lua.client.hgetall(f"{P}r:R"))["an"] == "n3"
    assert set(await lua.client.smembers(f"{P}n:n3")) == {"a"}
    assert await lua.client.smembers(f"{P}n:n1") == set()
    # The other seat moves too; its notice names where a is now. Again: the same.
    found = wire.from_script(await lua.run("MOVE", "b", "n4"))
    assert found == [MovedNotice("a", "n3", "R", "b", "n4")]
    assert wire.from_script(await lua.run("MOVE", "b", "n4")) == found
    assert await lua.client.hgetall(f"{P}r:R") == {"a": "a", "an": "n3", "b": "b",
                                                   "bn": "n4"}
    assert await lua.client.smembers(f"{P}n:n2") == set()
    await lua.enqueue("q", "n1")
    assert await lua.run("MOVE", "q", "n3") == []  # queued: nobody to tell
    assert (await lua.record("q"))["node"] == "n3" and await lua.queue() == ["q"]
    assert set(await lua.client.smembers(f"{P}n:n3")) == {"a", "q"}
    assert await lua.run("MOVE", "nobody", "n3") == []
    # The partner hangs up: the end notice names the new node.
    assert await lua.leave("b", "R") == [EndNotice("a", "n3", "R")]


async def test_lost_nodes_people_wait_out_the_window_then_are_gone(lua: Scripts) -> None:
    await lua.run("HEARTBEAT", "n1", 60_000, 1, 60_000)
    await lua.run("HEARTBEAT", "n2", 60_000, 1, 60_000)
    await lua.enqueue("q1", "n1", pid="n1.q1.secret")
    await lua.cool("q1", "x")
    await lua.cool("q1", "y")
    await lua.enqueue("x", "n1", ticket=4, pid="n1.x.secret")
    await lua.enqueue("y", "n2", room="R")
    await lua.cool("q1", "w")
    await lua.enqueue("w", "n1", pid="n1.w.secret")
    await lua.cool("q1", "v")
    await lua.enqueue("v", "n2", room="R2")  # w (n1) with v (n2)
    assert (await lua.record("v"))["room"] == "R2" and await lua.queue() == ["q1"]
    await lua.client.delete([f"{P}alive:n1"])
    alive, found = await lua.run("HEARTBEAT", "n2", 60_000, 0, 60_000)
    # Nobody told: n1's people are away. Their partners' nodes learn it (to keep what
    # the partners relay meanwhile).
    assert alive == 1 and sorted(wire.from_script(found), key=repr) == [
        wire.LostNotice("v", "n2", "R2", "w"), wire.LostNotice("y", "n2", "R", "x")]
    assert {sid: (await lua.record(sid))["away"] for sid in ("q1", "x", "w")} == {
        "q1": "lost", "x": "lost", "w": "lost"}
    assert await lua.enqueue("z", "n2") == ("queued", [])  # q1 is skipped
    # x comes back on n3 with its recovery id (another id is refused).
    assert await lua.run("RECLAIM", "x", "n1.x.forged", "n3") == []
    assert await lua.run("RECLAIM", "x", "n1.x.secret", "n3") == [
        "r", "4", "", "", "R", "y", "n2"]
    assert (await lua.client.hgetall(f"{P}r:R"))["an"] == "n3"
    assert "away" not in await lua.record("x")
    # The window ends for the others: q1 leaves the queue, w's partner is told.
    for sid in ("q1", "w"):
        await lua.client.zadd(f"{P}gone", {sid: 1})
    alive, found = await lua.run("HEARTBEAT", "n2", 60_000, 0, 60_000)
    assert wire.from_script(found) == [EndNotice("v", "n2", "R2")]
    assert await lua.queue() == ["z"]
    assert await lua.record("q1") == {} and await lua.record("w") == {}
    assert (await lua.record("x"))["node"] == "n3"  # recovered: untouched
    assert await lua.run("RECLAIM", "w", "n1.w.secret", "n3") == []  # too late


async def test_return_pairs_with_whoever_waited_longer_once_cooled(lua: Scripts) -> None:
    await lua.enqueue("a")
    await lua.cool("a", "b")
    await lua.enqueue("b")
    await lua.run("AWAY", "b")
    assert await lua.run("RETURN", "b", "R1", 200) == []  # still cooling with a
    assert int(await lua.client.get(f"{P}wake")) > 0  # a sweep will look again
    await lua.run("AWAY", "b")
    await lua.client.delete([f"{P}c:a|b"])
    found = wire.from_script(await lua.run("RETURN", "b", "R2", 200))
    # b is back, but a waited longer: a starts the call.
    assert found == [match("a", "n1", 1, "R2", "b", "n1", True),
                     match("b", "n1", 1, "R2", "a", "n1", False)]
    assert await lua.queue() == []


async def test_reclaim_the_second_seat_and_a_queued_place(lua: Scripts) -> None:
    await lua.run("HEARTBEAT", "n1", 60_000, 1, 60_000)
    await lua.run("HEARTBEAT", "n2", 60_000, 1, 60_000)
    await lua.enqueue("a", "n2")
    await lua.enqueue("b", "n1", ticket=3, room="R", pid="n1.b.secret")
    await lua.enqueue("q", "n1", ticket=5, pid="n1.q.secret")
    await lua.client.delete([f"{P}alive:n1"])
    alive, found = await lua.run("HEARTBEAT", "n2", 60_000, 0, 60_000)
    assert alive == 1 and wire.from_script(found) == [wire.LostNotice("a", "n2", "R", "b")]
    assert await lua.run("RECLAIM", "b", "n1.b.secret", "n3") == [
        "r", "3", "", "", "R", "a", "n2"]
    assert (await lua.client.hgetall(f"{P}r:R"))["bn"] == "n3"
    assert await lua.run("RECLAIM", "q", "n1.q.secret", "n3") == [
        "q", "5", "Q", "", "", "", ""]
    assert await lua.record("q") == {"state": "q", "node": "n3", "ticket": "5",
                                     "name": "Q", "image": "", "pid": "n1.q.secret"}
    assert set(await lua.client.smembers(f"{P}n:n3")) == {"b", "q"}
    assert await lua.client.smembers(f"{P}n:n1") == set()
    assert not await lua.client.zrange(f"{P}gone", 0, -1)
    assert (await lua.enqueue("z", "n2"))[0] == "paired"  # q is present again
    assert await lua.leave("a", "R") == [EndNotice("b", "n3", "R")]
