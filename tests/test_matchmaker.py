"""The matchmaker actor: pairing, cooldowns, queue cap, departures, failures, status."""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from liveloop.messages import Enqueue, HangupReason, Member, Withdraw
from liveloop.pairing import Lobby
from liveloop.room import Room
from tests.fakes import FakeSocket, open_world

PNG = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture
def clock(autojump_clock: MockClock) -> MockClock:
    """The autojump clock under a short name; a test must take it as an argument."""
    return autojump_clock


async def test_pair_both_get_match_done_with_one_initiator(nursery: trio.Nursery,
                                                           clock: MockClock) -> None:
    world = await open_world(nursery)
    a = await world.client()
    b = await world.client()
    assert await world.join(a, "Ann", PNG) == {"ok": True}
    assert a.names() == []  # alone: waits
    assert await world.join(b, "Bob") == {"ok": True}
    (done_a,) = a.received("match-done")
    (done_b,) = b.received("match-done")
    assert done_a == {"roomId": done_a["roomId"], "initiator": True,
                      "remoteUserDetails": {"socket": b.sid, "userName": "Bob",
                                            "userImage": ""}}
    assert done_b == {"roomId": done_a["roomId"], "initiator": False,
                      "remoteUserDetails": {"socket": a.sid, "userName": "Ann",
                                            "userImage": PNG}}
    assert world.service.status()["rooms"] == {"active": 1, "total": 1}


async def test_first_come_first_served(nursery: trio.Nursery, clock: MockClock) -> None:
    world = await open_world(nursery)
    clients = [await world.client() for _ in range(5)]
    for client in clients:
        await world.join(client)
    partner = {c.sid: c.received("match-done")[0]["remoteUserDetails"]["socket"]
               for c in clients[:4]}
    assert partner[clients[0].sid] == clients[1].sid
    assert partner[clients[2].sid] == clients[3].sid
    assert clients[4].received("match-done") == []
    assert world.matchmaker.where(clients[4].sid) == "queue"


async def test_alone_never_paired_and_never_queued_twice(nursery: trio.Nursery,
                                                         clock: MockClock) -> None:
    world = await open_world(nursery)
    a = await world.client()
    for _ in range(3):
        assert await world.join(a) == {"ok": True}  # again while queued: ok, no change
    assert world.service.status()["queue"] == {"size": 1, "users": ["Ann"]}
    assert a.names() == []
    b = await world.client()
    await world.join(b)
    assert len(a.received("match-done")) == len(b.received("match-done")) == 1
    assert world.service.status()["queue"]["size"] == 0


async def test_next_cooldown_skips_the_pair_not_the_others(nursery: trio.Nursery,
                                                           clock: MockClock) -> None:
    world = await open_world(nursery)
    a, b, room = await world.pair()
    await trio.sleep(5)  # request-room is limited to one per 5 s
    assert await world.ask(a, "request-room", {"name": "Ann", "roomId": room}) == {"ok": True}
    assert b.names() == ["match-done", "stop-by-remote-user"]
    assert a.names() == ["match-done"]  # the caller is not told its own Next
    assert world.service.status()["queue"]["size"] == 2  # both queued, not re-paired
    c = await world.client()
    d = await world.client()
    await world.join(c, "Cy")
    await world.join(d, "Di")
    matched = {c.received("match-done")[0]["remoteUserDetails"]["socket"],
               d.received("match-done")[0]["remoteUserDetails"]["socket"]}
    assert matched == {a.sid, b.sid}
    assert world.service.status()["queue"]["size"] == 0


async def test_cooldown_expires(nursery: trio.Nursery, clock: MockClock) -> None:
    world = await open_world(nursery)
    a, b, room = await world.pair()
    await trio.sleep(5)
    await world.ask(a, "request-room", {"name": "Ann", "roomId": room})
    await trio.sleep(59.9)
    assert len(a.received("match-done")) == 1
    await trio.sleep(0.2)  # 60 s after the Next: the matchmaker wakes up by itself
    await world.settle()
    (_, again_a) = a.received("match-done")
    (_, again_b) = b.received("match-done")
    assert again_a["roomId"] == again_b["roomId"] != room
    assert again_a["initiator"] != again_b["initiator"]


async def test_cooldown_setting(nursery: trio.Nursery, clock: MockClock) -> None:
    world = await open_world(nursery, pair_cooldown=0)
    a, _, room = await world.pair()
    await trio.sleep(5)
    await world.ask(a, "request-room", {"name": "Ann", "roomId": room})
    assert len(a.received("match-done")) == 2  # no cooldown: paired again at once


async def test_queue_full_refused_before_queuing(nursery: trio.Nursery, clock: MockClock) -> None:
    world = await open_world(nursery, max_queue=1)
    a = await world.client()
    b = await world.client()
    await world.join(a)
    ack = await world.join(b, "Bob")
    assert ack == {"ok": False, "error": {"code": "queue-full", "message": ack["error"]["message"]}}
    assert b.errors()[0]["code"] == "queue-full"
    assert b.errors()[0]["event"] == "request-room"
    assert world.service.status()["queue"]["size"] == 1
    assert await world.ask(a, "stop-call") == {"ok": True}  # a stops waiting
    assert await world.join(b, "Bob") == {"ok": True}  # the refusal cost b no budget
    assert world.service.status()["queue"] == {"size": 1, "users": ["Bob"]}


async def test_queue_full_decided_by_the_matchmaker(nursery: trio.Nursery,
                                                    clock: MockClock) -> None:
    # Both ask before the matchmaker has counted either: the matchmaker's cap decides.
    world = await open_world(nursery, max_queue=1, pair_cooldown=60)
    a = await world.client()
    b = await world.client()
    world.matchmaker.lobby.avoid(a.sid, b.sid, trio.current_time())
    a.emit("request-room", {"name": "Ann"})
    b.emit("request-room", {"name": "Bob"})
    await world.settle()
    refused = [c for c in (a, b) if c.errors()]
    assert len(refused) == 1
    assert refused[0].errors()[0]["code"] == "queue-full"
    assert world.service.status()["queue"]["size"] == 1
    # The refused one is idle again: it may ask later.
    assert refused[0].handler.phase.value == "idle"


async def test_disconnect_in_queue_leaves_no_ghost(nursery: trio.Nursery, clock: MockClock) -> None:
    world = await open_world(nursery)
    a = await world.client()
    await world.join(a)
    a.disconnect()
    await world.settle()
    assert world.service.status()["queue"]["size"] == 0
    b = await world.client()
    await world.join(b)
    assert b.names() == []


async def test_request_then_disconnect_is_undone(nursery: trio.Nursery, clock: MockClock) -> None:
    world = await open_world(nursery)
    a = await world.client()
    a.emit("request-room", {"name": "Ann"})
    a.disconnect()  # before anything ran: Enqueue then Withdraw reach the matchmaker
    await world.settle()
    b = await world.client()
    await world.join(b)
    assert b.names() == []
    assert world.matchmaker.where(a.sid) is None


async def test_enqueue_of_live_socket_then_withdraw_wins(nursery: trio.Nursery,
                                                         clock: MockClock) -> None:
    # Straight to the matchmaker: the socket still looks alive when Enqueue is handled.
    world = await open_world(nursery)
    socket = FakeSocket("ghost")
    member = Member("ghost", "Gus", "", socket)
    mailbox = world.matchmaker.mailbox
    await mailbox.send(Enqueue(member, 1))
    await mailbox.send(Withdraw("ghost", reason="disconnect"))  # type: ignore[arg-type]
    await world.settle()
    b = await world.client()
    await world.join(b)
    assert b.names() == []
    assert socket.emitted == []


async def test_dead_socket_never_paired(nursery: trio.Nursery, clock: MockClock) -> None:
    world = await open_world(nursery)
    socket = FakeSocket("ghost")
    await world.matchmaker.mailbox.send(Enqueue(Member("ghost", "Gus", "", socket), 1))
    await world.settle()
    socket.close("transport close")  # its Withdraw has not arrived yet
    b = await world.client()
    await world.join(b)
    assert b.names() == []
    assert world.service.status()["queue"]["size"] == 1  # b alone


async def test_matchmaker_crash_propagates(monkeypatch: pytest.MonkeyPatch,
                                          clock: MockClock) -> None:
    def boom(self: Any, sid: str, entry: Any) -> Any:
        raise RuntimeError("matchmaker bug")

    monkeypatch.setattr(Lobby, "enqueue", boom)
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            world = await open_world(nursery)
            a = await world.client()
            a.emit("request-room", {"name": "Ann"})
            await trio.sleep_forever()
    assert info.group_contains(RuntimeError, match="matchmaker bug")


async def test_room_crash_is_contained(nursery: trio.Nursery, clock: MockClock,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    original = Room.handle

    def fragile(self: Room, message: Any) -> None:
        if message.reason is HangupReason.STOP:
            raise RuntimeError("room bug")
        original(self, message)

    monkeypatch.setattr(Room, "handle", fragile)
    world = await open_world(nursery)
    a, b, room = await world.pair()
    c, d, _ = await world.pair("Cy", "Di")
    assert await world.ask(a, "stop-call", {"roomId": room}) == {"ok": True}
    # The room failed on the hang-up: both are told it ended; the one who did not hang
    # up is re-queued, as if the other had left.
    assert b.names() == ["match-done", "stop-by-remote-user"]
    assert a.names() == ["match-done"]
    # The other room goes on.
    assert await world.ask(c, "newMessage", {"message": "still here"}) == {"ok": True}
    assert d.received("Message:recived") == [{"from": c.sid, "message": "still here"}]
    assert world.service.status()["rooms"] == {"active": 1, "total": 2}
    assert world.service.status()["queue"]["size"] == 1


async def test_status_counts_and_hides_ids(nursery: trio.Nursery, clock: MockClock) -> None:
    world = await open_world(nursery, status_users=2)
    status = world.service.status()
    assert status["queue"] == {"size": 0, "users": []}
    assert status["rooms"] == {"active": 0, "total": 0}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", status["timestamp"])
    a, b, room = await world.pair()
    waiting = [await world.client() for _ in range(3)]
    world.matchmaker.lobby.avoid(waiting[0].sid, waiting[1].sid, trio.current_time())
    world.matchmaker.lobby.avoid(waiting[0].sid, waiting[2].sid, trio.current_time())
    world.matchmaker.lobby.avoid(waiting[1].sid, waiting[2].sid, trio.current_time())
    for client, name in zip(waiting, ["Cy", "Di", "Ed"], strict=True):
        await world.join(client, name, PNG)
    status = world.service.status()
    assert status["queue"] == {"size": 3, "users": ["Cy", "Di"]}  # capped, names only
    assert status["rooms"] == {"active": 1, "total": 1}
    assert "sid" not in repr(status) and "base64" not in repr(status)
    await world.ask(a, "stop-call", {"roomId": room})
    status = world.service.status()
    # The room closed; b, re-queued, was paired with Cy: a new room.
    assert status["rooms"] == {"active": 1, "total": 2}
    assert status["queue"] == {"size": 2, "users": ["Di", "Ed"]}
    assert b.received("match-done")[1]["remoteUserDetails"]["userName"] == "Cy"
