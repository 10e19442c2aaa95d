"""The connection actor through the whole domain: relays, spoofing, stop, Next,
disconnects, rate limits, validation, acks and ordering. No network: fake sockets."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from liveloop.config import Settings
from liveloop.messages import Deliver, Matched, MatchmakerMessage, Member, RoomEnded
from liveloop.peer import LiveLoopNamespace, Peer
from liveloop.peerstate import CallState, PeerState, Phase
from liveloop.ratelimit import RELAY_WINDOW, LimiterState
from liveloop.status import Snapshot
from tests.fakes import FakeClient, FakeSocket, World, open_world

OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\n"}
CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host",
             "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "f00d"}
OK = {"ok": True}


def error_ack(code: str) -> Any:
    class _Matches:
        def __eq__(self, other: object) -> bool:
            return (isinstance(other, dict) and other.get("ok") is False
                    and other["error"]["code"] == code
                    and isinstance(other["error"]["message"], str))

        def __repr__(self) -> str:
            return f"<error ack {code}>"

    return _Matches()


@pytest.fixture
async def world(nursery: trio.Nursery) -> World:
    return await open_world(nursery)


@pytest.fixture
def clock(autojump_clock: MockClock) -> MockClock:
    """The autojump clock under a short name; a test must take it as an argument."""
    return autojump_clock


# -- relays ----------------------------------------------------------------------------


async def test_signaling_relayed_exactly(world: World, clock: MockClock) -> None:
    a, b, room = await world.pair()
    assert await world.ask(a, "negotiation-call-offer", {
        "offer": OFFER, "roomId": room, "name": "Ann", "remoteSocketId": b.sid}) == OK
    assert b.received("negotiation-call-offer") == [{
        "remoteUserDetails": {"socket": a.sid, "userName": "Ann"}, "roomId": room,
        "offer": OFFER}]
    assert await world.ask(b, "negotiation-call-answer", {
        "ans": ANSWER, "roomId": room, "name": "Bob", "remoteSocketId": a.sid}) == OK
    assert a.received("negotiation-call-answer") == [{
        "ans": ANSWER, "roomId": room, "name": "Bob", "remoteSocketId": b.sid}]
    assert await world.ask(a, "send-new-ice-candidates", {"to": b.sid,
                                                          "candidate": CANDIDATE}) == OK
    assert await world.ask(a, "send-new-ice-candidates", {"to": b.sid,
                                                          "candidate": None}) == OK
    assert b.received("new-ice-candidates") == [{"candidate": CANDIDATE},
                                                {"candidate": None}]
    assert a.errors() == b.errors() == []
    # Nothing echoed to the sender but chat.
    assert a.names() == ["match-done", "negotiation-call-answer"]


async def test_target_fields_may_be_left_out(world: World, clock: MockClock) -> None:
    a, b, _ = await world.pair()
    assert await world.ask(a, "negotiation-call-offer", {"offer": OFFER}) == OK
    assert await world.ask(b, "send-new-ice-candidates", {"candidate": None}) == OK
    assert await world.ask(b, "newMessage", {"message": "hi"}) == OK
    assert len(b.received("negotiation-call-offer")) == 1
    assert a.received("new-ice-candidates") == [{"candidate": None}]


async def test_chat_reaches_both(world: World, clock: MockClock) -> None:
    a, b, room = await world.pair()
    assert await world.ask(a, "newMessage", {"message": "hello", "roomId": room,
                                             "remoteSocket": b.sid}) == OK
    expected = [{"from": a.sid, "message": "hello"}]
    assert a.received("Message:recived") == b.received("Message:recived") == expected


async def test_claimed_name_is_not_relayed(world: World, clock: MockClock) -> None:
    a, b, _ = await world.pair()
    await world.ask(a, "negotiation-call-offer", {"offer": OFFER, "name": "Admin"})
    assert b.received("negotiation-call-offer")[0]["remoteUserDetails"] == {
        "socket": a.sid, "userName": "Ann"}


# -- spoofing ---------------------------------------------------------------------------


SPOOFS = [
    ("negotiation-call-offer", {"offer": OFFER, "remoteSocketId": "{c}"}, "invalid-target"),
    ("negotiation-call-offer", {"offer": OFFER, "roomId": "{other}"}, "invalid-room"),
    ("negotiation-call-answer", {"ans": ANSWER, "remoteSocketId": "{c}"}, "invalid-target"),
    ("negotiation-call-answer", {"ans": ANSWER, "roomId": "nope"}, "invalid-room"),
    ("send-new-ice-candidates", {"to": "{c}", "candidate": CANDIDATE}, "invalid-target"),
    ("send-new-ice-candidates", {"to": "{a}", "candidate": None}, "invalid-target"),
    ("newMessage", {"message": "hi", "remoteSocket": "{d}"}, "invalid-target"),
    ("newMessage", {"message": "hi", "roomId": "{other}"}, "invalid-room"),
    ("stop-call", {"roomId": "{other}"}, "invalid-room"),
    ("stop-call", {"remoteSocketId": "{c}"}, "invalid-target"),
]


@pytest.mark.parametrize(("event", "template", "code"), SPOOFS)
async def test_spoofing_refused_and_nothing_relayed(
        world: World, clock: MockClock, event: str, template: dict[str, Any], code: str
) -> None:
    a, b, _ = await world.pair()
    c, d, other = await world.pair("Cy", "Di")
    names = {"a": a.sid, "c": c.sid, "d": d.sid, "other": other}
    payload = {k: v.format(**names) if isinstance(v, str) else v
               for k, v in template.items()}
    for client in (a, b, c, d):
        client.clear()
    assert await world.ask(a, event, payload) == error_ack(code)
    assert a.errors() == [{"code": code, "message": a.errors()[0]["message"],
                           "event": event}]
    assert b.names() == c.names() == d.names() == []  # nothing relayed, nothing ended
    # Still in the same room, and usable.
    assert await world.ask(a, "newMessage", {"message": "ok"}) == OK
    assert b.received("Message:recived") == [{"from": a.sid, "message": "ok"}]


@pytest.mark.parametrize("event, payload", [
    ("negotiation-call-offer", {"offer": OFFER}),
    ("negotiation-call-answer", {"ans": ANSWER}),
    ("send-new-ice-candidates", {"candidate": None}),
    ("newMessage", {"message": "hi"}),
    ("stop-call", {}),
])
async def test_not_in_room(world: World, clock: MockClock, event: str,
                           payload: dict[str, Any]) -> None:
    a = await world.client()
    assert await world.ask(a, event, payload) == error_ack("not-in-room")
    assert a.errors()[0]["code"] == "not-in-room"


async def test_relay_while_queued_is_not_in_room(world: World, clock: MockClock) -> None:
    a = await world.client()
    await world.join(a)
    assert await world.ask(a, "newMessage", {"message": "hi"}) == error_ack("not-in-room")
    assert world.matchmaker.where(a.sid) == "queue"


# -- stop-call ---------------------------------------------------------------------------


async def test_stop_call_requeues_the_partner_only(world: World, clock: MockClock) -> None:
    a, b, room = await world.pair()
    assert await world.ask(a, "stop-call", {"roomId": room, "remoteSocketId": b.sid,
                                            "name": "Ann"}) == OK
    assert b.names() == ["match-done", "stop-by-remote-user"]
    assert a.names() == ["match-done"]
    mm = world.matchmaker
    assert mm.where(b.sid) == "queue"
    assert mm.where(a.sid) is None
    assert a.handler.phase is Phase.IDLE
    assert world.service.status()["rooms"]["active"] == 0
    # Relays after the end are refused.
    assert await world.ask(a, "newMessage", {"message": "late"}) == error_ack("not-in-room")
    assert b.received("Message:recived") == []


async def test_stop_call_without_requeue(nursery: trio.Nursery,
                                         autojump_clock: MockClock) -> None:
    world = await open_world(nursery, requeue_partner=False)
    a, b, _ = await world.pair()
    assert await world.ask(a, "stop-call") == OK
    assert b.names() == ["match-done", "stop-by-remote-user"]
    assert world.matchmaker.where(b.sid) is None
    assert world.service.status()["queue"]["size"] == 0


async def test_stop_call_while_queued_stops_waiting(world: World, clock: MockClock) -> None:
    a = await world.client()
    await world.join(a)
    assert await world.ask(a, "stop-call") == OK
    assert world.service.status()["queue"]["size"] == 0
    b = await world.client()
    await world.join(b)
    assert a.names() == b.names() == []


async def test_stop_call_naming_a_room_while_queued_stops_nothing(world: World,
                                                                  clock: MockClock) -> None:
    a = await world.client()
    await world.join(a)
    assert await world.ask(a, "stop-call", {"roomId": "old"}) == error_ack("invalid-room")
    assert world.matchmaker.where(a.sid) == "queue"


async def test_stop_then_ask_again_may_meet_the_same_partner(world: World,
                                                             clock: MockClock) -> None:
    a, b, _ = await world.pair()
    await world.ask(a, "stop-call")
    await trio.sleep(5)
    assert await world.join(a) == OK  # only "Next" sets a cooldown
    assert a.received("match-done")[1]["remoteUserDetails"]["socket"] == b.sid


# -- Next --------------------------------------------------------------------------------


async def test_next_with_own_room_id(world: World, clock: MockClock) -> None:
    a, b, room = await world.pair()
    await trio.sleep(5)
    assert await world.ask(a, "request-room", {"name": "Ann", "roomId": room}) == OK
    mm = world.matchmaker
    assert mm.where(a.sid) == mm.where(b.sid) == "queue"
    assert b.names() == ["match-done", "stop-by-remote-user"]
    assert a.errors() == []


async def test_next_with_foreign_room_id_still_next(world: World, clock: MockClock) -> None:
    a, b, _ = await world.pair()
    _, _, other = await world.pair("Cy", "Di")
    await trio.sleep(5)
    ack = await world.ask(a, "request-room", {"name": "Ann", "roomId": other})
    assert ack == error_ack("invalid-room")
    assert world.matchmaker.where(a.sid) == "queue"
    assert b.names() == ["match-done", "stop-by-remote-user"]


async def test_next_updates_the_profile(world: World, clock: MockClock) -> None:
    a, _, room = await world.pair()
    await trio.sleep(5)
    await world.ask(a, "request-room", {"name": "Annie", "roomId": room})
    c = await world.client()
    await world.join(c, "Cy")
    assert c.received("match-done")[0]["remoteUserDetails"]["userName"] == "Annie"


async def test_stale_room_id_on_request_room_still_queues(world: World, clock: MockClock) -> None:
    a = await world.client()
    ack = await world.ask(a, "request-room", {"name": "Ann", "roomId": "gone"})
    assert ack == error_ack("invalid-room")
    assert a.errors()[0]["event"] == "request-room"
    assert world.matchmaker.where(a.sid) == "queue"
    # Asked again while queued with a stale id: same answer, still queued once.
    assert await world.ask(a, "request-room", {"name": "Ann", "roomId": "gone"}) == \
        error_ack("invalid-room")
    assert world.service.status()["queue"]["size"] == 1


# -- disconnects -----------------------------------------------------------------------


async def test_disconnect_in_room_tells_and_requeues_partner(world: World,
                                                             clock: MockClock) -> None:
    a, b, _ = await world.pair()
    a.disconnect()
    await world.settle()
    assert b.names() == ["match-done", "stop-by-remote-user"]
    mm = world.matchmaker
    assert mm.where(b.sid) == "queue"
    assert mm.where(a.sid) is None
    assert world.service.status()["rooms"] == {"active": 0, "total": 1}
    c = await world.client()
    await world.join(c)
    assert c.received("match-done")[0]["remoteUserDetails"]["socket"] == b.sid


async def test_both_disconnect(world: World, clock: MockClock) -> None:
    a, b, _ = await world.pair()
    a.disconnect()
    b.disconnect()
    await world.settle()
    status = world.service.status()
    assert status["queue"]["size"] == 0
    assert status["rooms"]["active"] == 0


async def test_disconnect_right_after_being_paired(world: World, clock: MockClock) -> None:
    # b's disconnect is handled before b's connection sees its match.
    a = await world.client()
    b = await world.client()
    await world.join(a)
    b.emit("request-room", {"name": "Bob"})
    await trio.testing.wait_all_tasks_blocked()
    b.disconnect()
    await world.settle()
    assert a.names() == ["match-done", "stop-by-remote-user"]
    assert world.matchmaker.where(a.sid) == "queue"
    assert world.service.status()["rooms"]["active"] == 0


# -- rate limits ---------------------------------------------------------------------------


async def test_request_room_rate_limit(world: World, clock: MockClock) -> None:
    a = await world.client()
    assert await world.join(a) == OK
    assert await world.ask(a, "stop-call") == OK
    await trio.sleep(2)
    ack = await world.join(a)
    assert ack == error_ack("rate-limited")
    assert a.errors()[-1] == {"code": "rate-limited", "message": a.errors()[-1]["message"],
                              "event": "request-room", "retryAfter": 3.0}
    assert world.matchmaker.where(a.sid) is None
    await trio.sleep(3)
    assert await world.join(a) == OK


async def test_next_is_rate_limited_and_ends_nothing(world: World, clock: MockClock) -> None:
    a, b, room = await world.pair()
    assert await world.ask(a, "request-room", {"name": "Ann", "roomId": room}) == \
        error_ack("rate-limited")
    assert b.names() == ["match-done"]
    assert world.matchmaker.where(a.sid) == room


async def test_message_rate_limit(world: World, clock: MockClock) -> None:
    a, b, _ = await world.pair()
    for i in range(10):
        assert await world.ask(a, "newMessage", {"message": f"m{i}"}) == OK
        await trio.sleep(1)
    assert await world.ask(a, "newMessage", {"message": "m10"}) == error_ack("rate-limited")
    assert a.errors()[-1]["retryAfter"] == 50.0
    assert len(b.received("Message:recived")) == 10
    assert await world.ask(b, "newMessage", {"message": "b's own budget"}) == OK
    await trio.sleep(50)
    assert await world.ask(a, "newMessage", {"message": "m11"}) == OK


async def test_ice_candidates_have_only_the_relay_budget(world: World,
                                                       clock: MockClock) -> None:
    """No rate limit of the seed's on candidates: a whole budget's worth at once passes;
    beyond it the sender (only) is told rate-limited, and the budget refills evenly."""
    a, b, _ = await world.pair()
    budget = world.settings.relay_budget
    for _ in range(budget):
        a.emit("send-new-ice-candidates", {"candidate": CANDIDATE}, ack=False)
    await world.settle()
    assert len(b.received("new-ice-candidates")) == budget
    assert a.errors() == []
    assert await world.ask(a, "send-new-ice-candidates", {"candidate": CANDIDATE}) == \
        error_ack("rate-limited")
    assert a.errors()[-1]["retryAfter"] == RELAY_WINDOW / budget
    assert b.errors() == []
    assert await world.ask(b, "send-new-ice-candidates", {"candidate": None}) == OK
    await trio.sleep(RELAY_WINDOW / budget)
    assert await world.ask(a, "send-new-ice-candidates", {"candidate": None}) == OK
    assert len(b.received("new-ice-candidates")) == budget + 1


async def test_relay_budget_stays_on_without_rate_limits(
        nursery: trio.Nursery, autojump_clock: MockClock) -> None:
    world = await open_world(nursery, rate_limits=False, relay_budget=3)
    a, b, _ = await world.pair()
    for _ in range(3):
        assert await world.ask(a, "negotiation-call-offer", {"offer": OFFER}) == OK
    assert await world.ask(a, "negotiation-call-offer", {"offer": OFFER}) == \
        error_ack("rate-limited")
    assert len(b.received("negotiation-call-offer")) == 3


async def test_relay_budget_zero_is_no_limit(nursery: trio.Nursery,
                                            autojump_clock: MockClock) -> None:
    world = await open_world(nursery, relay_budget=0)
    a, b, _ = await world.pair()
    for _ in range(500):
        a.emit("send-new-ice-candidates", {"candidate": None}, ack=False)
    await world.settle()
    assert len(b.received("new-ice-candidates")) == 500


async def test_rate_limits_off(nursery: trio.Nursery,
                               autojump_clock: MockClock) -> None:
    world = await open_world(nursery, rate_limits=False)
    a, _, _ = await world.pair()
    for _ in range(30):
        assert await world.ask(a, "newMessage", {"message": "x"}) == OK
    for _ in range(3):
        assert await world.ask(a, "stop-call") in (OK, error_ack("not-in-room"))
        assert await world.join(a) == OK


# -- validation, unknown events, acks --------------------------------------------------------


@pytest.mark.parametrize("event, args", [
    ("request-room", []),
    ("request-room", [None]),
    ("request-room", [{"name": ""}]),
    ("request-room", [{"name": "Ann", "userImage": "javascript:alert(1)"}]),
    ("request-room", ["Ann"]),
    ("negotiation-call-offer", [{"offer": {"type": "offer", "sdp": "x" * 20_001}}]),
    ("negotiation-call-answer", [{"ans": "v=0"}]),
    ("send-new-ice-candidates", [{"to": "x"}]),
    ("newMessage", [{"message": "x" * 1_001}]),
    ("newMessage", [{"message": b"bytes"}]),
    ("stop-call", ["now"]),
])
async def test_invalid_payload_keeps_socket_usable(world: World, clock: MockClock,
                                                   event: str, args: list[Any]) -> None:
    a, b, _ = await world.pair()
    a.clear()
    b.clear()
    a.emit(event, *args)
    recorder = a.emit("newMessage", {"message": "still here"})
    await world.settle()
    (error,) = a.errors()
    assert error["code"] == "invalid-payload"
    assert error["event"] == event
    assert recorder is not None and recorder.value == OK
    assert b.names() == ["Message:recived"]


async def test_unknown_event(world: World, clock: MockClock) -> None:
    a = await world.client()
    for event in ("match-done", "hack", "Message:recived", "x" * 500):
        assert await world.ask(a, event, {"x": 1}) == error_ack("unknown-event")
    assert [e["code"] for e in a.errors()] == ["unknown-event"] * 4
    assert len(a.errors()[-1]["event"]) <= 64
    assert await world.join(a) == OK


async def test_errors_without_ack_still_emitted(world: World, clock: MockClock) -> None:
    a = await world.client()
    a.emit("newMessage", {"message": "hi"}, ack=False)
    a.emit("request-room", {"name": "Ann"}, ack=False)
    await world.settle()
    assert [e["code"] for e in a.errors()] == ["not-in-room"]
    assert world.matchmaker.where(a.sid) == "queue"


async def test_each_ack_sent_once(world: World, clock: MockClock) -> None:
    a, _, _ = await world.pair()
    recorders = [a.emit("newMessage", {"message": "x"}), a.emit("stop-call"),
                 a.emit("stop-call"), a.emit("bogus")]
    await world.settle()
    for recorder in recorders:
        assert recorder is not None and len(recorder.calls) == 1


# -- ordering, stale messages, tickets (the peer on its own) ------------------------------


async def lone_peer() -> tuple[Peer, FakeSocket, trio.MemoryReceiveChannel[MatchmakerMessage]]:
    send, receive = trio.open_memory_channel[MatchmakerMessage](math.inf)
    socket = FakeSocket("s1")
    namespace = LiveLoopNamespace(Settings(), send, Snapshot)
    return await namespace.connect(socket, {"token": "ignored"}), socket, receive


def matched(ticket: int, room_id: str) -> Matched:
    inbox, _ = trio.open_memory_channel[Any](1)
    partner = Member("s2", "Bob", "", FakeSocket("s2"))
    return Matched(ticket, room_id, inbox, partner=partner, initiator=False)


async def test_nothing_from_an_old_room_after_a_new_match() -> None:
    peer, socket, _ = await lone_peer()
    await peer.on_event("request-room", [{"name": "Ann"}], None)
    await peer.on_message(matched(1, "r1"))
    await peer.on_message(RoomEnded("r1", requeue=True))  # re-queued: ticket 2
    await peer.on_message(matched(2, "r2"))
    await peer.on_message(Deliver("r1", "negotiation-call-offer", {"late": True}))
    await peer.on_message(RoomEnded("r1", requeue=True))
    await peer.on_message(Deliver("r2", "negotiation-call-offer", {"fresh": True}))
    assert [e for e, _ in socket.emitted] == [
        "match-done", "stop-by-remote-user", "match-done", "negotiation-call-offer"]
    assert socket.emitted[-1][1] == [{"fresh": True}]
    assert peer.call is not None and peer.call.room_id == "r2"


async def test_answer_to_a_withdrawn_request_is_ignored() -> None:
    peer, socket, mailbox = await lone_peer()
    await peer.on_event("request-room", [{"name": "Ann"}], None)
    await peer.on_event("stop-call", [], None)
    await peer.on_message(matched(1, "r1"))  # paired before our Withdraw arrived
    assert socket.emitted == []
    assert peer.phase is Phase.IDLE
    kinds = [type(mailbox.receive_nowait()).__name__ for _ in range(2)]
    assert kinds == ["Enqueue", "Withdraw"]  # the matchmaker ends r1 on the Withdraw


async def test_disconnect_always_withdraws_once_queued() -> None:
    peer, _, mailbox = await lone_peer()
    await peer.on_disconnect("transport close")
    with pytest.raises(trio.WouldBlock):
        mailbox.receive_nowait()  # never queued: nothing to undo
    peer, _, mailbox = await lone_peer()
    await peer.on_event("request-room", [{"name": "Ann"}], None)
    await peer.on_event("stop-call", [], None)
    await peer.on_disconnect("transport close")
    assert [type(mailbox.receive_nowait()).__name__ for _ in range(3)] == [
        "Enqueue", "Withdraw", "Withdraw"]


async def test_stop_by_remote_user_follows_match_done(world: World, clock: MockClock) -> None:
    # The partner leaves in the same instant the match is made.
    a = await world.client()
    b = await world.client()
    await world.join(a)
    b.emit("request-room", {"name": "Bob"})
    a.disconnect()
    await world.settle()
    names = b.names()
    if names:
        assert names == ["match-done", "stop-by-remote-user"]


async def test_unexpected_message_is_ignored() -> None:
    peer, socket, _ = await lone_peer()
    await peer.on_message("junk")
    assert socket.emitted == []


@pytest.mark.parametrize("state", [
    PeerState(Phase.IDLE, 0),
    PeerState(Phase.QUEUED, 3, ("Ann", "a.png"), seen=("e1",)),
    PeerState(Phase.IN_ROOM, 7, ("Ann", ""), LimiterState(1.5, (2.0, 3.0), (4.0,)),
              ("e1", "e2"), "turn-id", (2.5, 0.25),
              CallState("room", "sid-b", "Bob", "b.png", "node-b")),
])
def test_a_peer_state_survives_its_json(state: PeerState) -> None:
    # What one node exports (through JSON text) is what the next restores.
    assert PeerState.from_json(json.loads(json.dumps(state.to_json()))) == state


def client_names(*clients: FakeClient) -> list[list[str]]:
    return [c.names() for c in clients]


# -- acks that wait for the shared state (several nodes on Redis: ``confirm``) ----------


async def confirming_peer() -> tuple[Peer, FakeSocket,
                                     trio.MemoryReceiveChannel[MatchmakerMessage]]:
    """A lone peer whose acks wait for its changes' receipts, as with Redis."""
    send, receive = trio.open_memory_channel[MatchmakerMessage](math.inf)
    socket = FakeSocket("s1")
    namespace = LiveLoopNamespace(Settings(), send, Snapshot, confirm=True)
    return await namespace.connect(socket, None), socket, receive


async def ask_confirmed(peer: Peer, mailbox: trio.MemoryReceiveChannel[MatchmakerMessage],
                        event: str, payload: dict[str, Any], outcome: str) -> list[Any]:
    """Send ``event``; the shared state applies its change (``outcome`` "applied"),
    fails to ("failed") or never answers ("never"). Returns the acks sent."""
    from liveloop.messages import release

    acks: list[Any] = []

    def ack(*args: Any) -> None:
        acks.extend(args)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.on_event, event, [payload], ack)
        message = await mailbox.receive()
        await trio.testing.wait_all_tasks_blocked()
        assert acks == [], "acked before the shared state answered"
        if outcome != "never":
            release(message, failed=outcome == "failed")
    return acks


@pytest.mark.parametrize("outcome", ["applied", "failed", "never"])
async def test_a_change_redis_could_not_apply_is_refused_unavailable(
        clock: MockClock, outcome: str) -> None:
    from liveloop.peer import UNAVAILABLE

    peer, socket, mailbox = await confirming_peer()
    acks = await ask_confirmed(peer, mailbox, "request-room", {"name": "Ann"}, outcome)
    if outcome == "applied":
        assert acks == [OK]
        assert socket.emitted == []
        assert socket.connected
    else:  # a failed script, or none confirmed within node_timeout
        assert acks == [error_ack("unavailable")]
        assert acks[0]["error"]["message"] == UNAVAILABLE
        assert socket.emitted == [("error-message", [
            {"code": "unavailable", "message": UNAVAILABLE, "event": "request-room"}])]
        # Whether the change was made is unknown (a late one may yet land): the peer
        # keeps the refusal's promise and drops the connection itself, after it (its
        # Withdraw then follows the change).
        assert not socket.connected
        return
    acks = await ask_confirmed(peer, mailbox, "stop-call", {}, "applied")
    assert acks == [OK]
    assert peer.phase is Phase.IDLE


async def test_unavailable_wins_over_invalid_room(clock: MockClock) -> None:
    # A stale roomId is invalid-room "and queued anyway": not if the queueing failed.
    peer, socket, mailbox = await confirming_peer()
    acks = await ask_confirmed(peer, mailbox, "request-room",
                               {"name": "Ann", "roomId": "gone"}, "failed")
    assert acks == [error_ack("unavailable")]
    assert [(name, args[0]["code"]) for name, args in socket.emitted] == [
        ("error-message", "unavailable")]
