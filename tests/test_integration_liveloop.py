"""DESIGN.md's "Event semantics", end to end, through real Socket.IO clients.

The server is started by each entry of ``tests/hosts.py`` in turn (the ``entry``
fixture): ``create_app(Settings(bind="127.0.0.1:0", ...))`` served as ``liveloop serve``
does in the test's nursery, then ``hypercorn -k trio``, ``hypercorn`` (asyncio, Trio as a
guest), ``hypercorn -k uvloop`` and ``uvicorn`` running ``liveloop.app:app`` in a child
process kept for the module (its counts read relative to the test's start); the clients
are the official npm ``socket.io-client`` (default transports
and WebSocket-only) and python-socketio (WebSocket-only and polling-only), several named
sockets per driver process. ``/api/status`` is read over plain HTTP.

Determinism: every wait is on a client event, an ack or a status document under
``trio.fail_after``. Where a negative must be shown ("nothing was relayed", "no second
match-done"), a later event that the server must emit *after* anything wrong is used as a
barrier (the server emits per connection in decision order), and then the socket's unread
events are checked. Status snapshots are read after a ``match-done`` (the matchmaker
publishes them before the match is emitted) or polled until they reach an expected value.

Where the order in which two clients reach the queue is a genuine race (both are
re-queued after "Next"), tests accept either outcome and check the invariants.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio

from liveloop.app import create_app
from liveloop.config import Settings

from .cluster import RedisServer, need_redis
from .conftest import DEADLINE, Sock, Variant, http_get, start_server
from .hosts import Entry, Hosts
from .nodeclient import NodeClient

IMAGE = "data:image/png;base64,iVBORw0KGgo="
OK = {"ok": True}
OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\n"}
CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host",
             "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "f00d"}
RELAYED = frozenset({"negotiation-call-offer", "negotiation-call-answer",
                     "new-ice-candidates", "Message:recived"})
NOTHING = object()
"""An emit with no argument at all."""


# -- fixtures and helpers -------------------------------------------------------------


@pytest.fixture
async def driver(variant: Variant) -> AsyncIterator[NodeClient]:
    """One client process per test; each test opens several named sockets in it."""
    async with NodeClient(variant.kind) as client:  # type: ignore[arg-type]
        yield client


@attrs.define
class Live:
    url: str
    driver: NodeClient
    variant: Variant
    socks: list[Sock] = attrs.Factory(list)
    others: tuple[str, ...] = ()
    """More nodes of the same service (on one Redis): clients join the nodes in turn."""
    rooms_before: int = 0
    """Rooms the server had made before this test (a child server serves a module)."""

    async def join(self, name: str) -> Sock:
        sock = Sock(self.driver, name)
        nodes = (self.url, *self.others)
        with trio.fail_after(DEADLINE):
            await sock.connect(nodes[len(self.socks) % len(nodes)], **self.variant.opts())
            await sock.wait("connect")
        self.socks.append(sock)
        return sock

    async def status(self) -> dict[str, Any]:
        with trio.fail_after(DEADLINE):
            response = await http_get(self.url, "/api/status")
        assert response.status == 200
        assert response.headers["content-type"].startswith("application/json")
        document: dict[str, Any] = response.json()
        document["rooms"]["total"] -= self.rooms_before
        return document

    async def settle(self) -> None:
        """Wait until earlier tests' clients have left a shared server, and count its
        rooms from here."""
        with trio.fail_after(4 * DEADLINE):  # a polling client's leave may wait for a poll
            while True:
                document = await self.status()
                if document["queue"]["size"] == 0 and document["rooms"]["active"] == 0:
                    self.rooms_before = document["rooms"]["total"]
                    return
                await trio.sleep(0.05)

    async def status_until(self, want: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Poll ``/api/status`` until ``want`` holds (a deadline, not a sleep, decides)."""
        with trio.fail_after(DEADLINE):
            while True:
                document = await self.status()
                if want(document):
                    return document
                await trio.sleep(0.01)

    def check_all(self) -> None:
        for sock in self.socks:
            check_order(sock)


@attrs.frozen
class Server:
    """Where a test's server comes from: its entry, and the entry's child servers."""

    entry: Entry
    hosts: Hosts
    nursery: trio.Nursery
    redis_url: str = ""
    """Set: two nodes in this process sharing that Redis, which clients join in turn."""

    async def live(self, driver: NodeClient, variant: Variant, **overrides: Any) -> Live:
        if self.entry.in_process:
            settings = attrs.evolve(Settings(bind="127.0.0.1:0", redis_url=self.redis_url),
                                    **overrides)
            url = await start_server(self.nursery, create_app(settings), settings)
            if not self.redis_url:
                return Live(url, driver, variant)
            other = await start_server(self.nursery, create_app(settings), settings)
            return Live(url, driver, variant, others=(other,))
        url = await trio.to_thread.run_sync(self.hosts.url, overrides)
        live = Live(url, driver, variant)
        await live.settle()
        return live


@pytest.fixture(params=["one process", "two nodes on Redis"])
async def deployment(request: pytest.FixtureRequest, entry: Entry,
                     nursery: trio.Nursery) -> str:
    """Every in-process test also runs against two nodes sharing a real Redis (each its
    own app in this process), which the test's clients join in turn."""
    if request.param == "one process":
        return ""
    if not entry.in_process:
        pytest.skip("two nodes on Redis: in process only")
    redis = RedisServer(nursery, need_redis())
    await redis.start()
    request.addfinalizer(lambda: redis.process.kill() if redis.process else None)
    return redis.url


@pytest.fixture
def server(entry: Entry, hosts: Hosts, nursery: trio.Nursery, deployment: str) -> Server:
    return Server(entry, hosts, nursery, deployment)


# The two fixtures' functions are named with a "_" so that test_integration_workers's
# "import *" leaves them out: it has a live and a live_unlimited of its own.
@pytest.fixture(name="live")
async def _live(server: Server, driver: NodeClient, variant: Variant) -> Live:
    """The server with its default settings (rate limits on, 60 s cooldown)."""
    return await server.live(driver, variant)


@pytest.fixture(name="live_unlimited")
async def _live_unlimited(server: Server, driver: NodeClient, variant: Variant) -> Live:
    """Rate limits off, for tests that press "Next" within 5 s of their first request."""
    return await server.live(driver, variant, rate_limits=False)


def request(name: str, image: str = "", room_id: str | None = None) -> dict[str, Any]:
    return {"name": name, "roomId": room_id, "userImage": image}


def ice(sender: Sock, **extra: Any) -> dict[str, Any]:
    """A candidate tagged with its sender's sid (in usernameFragment), for order checks."""
    return {"candidate": {**CANDIDATE, "usernameFragment": sender.sid}, **extra}


async def call(sock: Sock, event: str, payload: Any = NOTHING) -> Any:
    with trio.fail_after(DEADLINE):
        if payload is NOTHING:
            return await sock.call(event)
        return await sock.call(event, payload)


async def receive(sock: Sock, event: str) -> Any:
    with trio.fail_after(DEADLINE):
        return await sock.receive(event)


async def pair(a: Sock, b: Sock, a_name: str = "Ann", b_name: str = "Bob",
               a_image: str = IMAGE, b_image: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Queue ``a`` then ``b``; both get match-done (``a`` waited longer)."""
    assert await call(a, "request-room", request(a_name, a_image)) == OK
    assert await call(b, "request-room", request(b_name, b_image)) == OK
    return await receive(a, "match-done"), await receive(b, "match-done")


async def refused(sock: Sock, event: str, payload: Any, code: str) -> dict[str, Any]:
    """``event`` is refused with ``code``: as the ack and as ``error-message``."""
    ack = await call(sock, event, payload)
    assert ack["ok"] is False, (event, payload, ack)
    assert set(ack) == {"ok", "error"} and set(ack["error"]) == {"code", "message"}
    assert ack["error"]["code"] == code, (event, payload, ack)
    assert isinstance(ack["error"]["message"], str) and ack["error"]["message"]
    error: dict[str, Any] = await receive(sock, "error-message")
    assert error["code"] == code and error["event"] == event, error
    keys = {"code", "message", "event"} | ({"retryAfter"} if code == "rate-limited" else set())
    assert set(error) == keys, error
    return error


def unread_events(sock: Sock) -> list[tuple[str, Any]]:
    return [(line["event"], line["args"]) for line in sock.unread() if line["type"] == "event"]


def check_order(sock: Sock) -> None:
    """Per connection: every relayed event and every ``stop-by-remote-user`` belongs to
    the room of the latest ``match-done`` (relays are tagged with their sender), and
    after a room's end nothing comes but a new ``match-done``."""
    room: str | None = None
    partner: str | None = None
    for line in sock.log:
        if line["type"] != "event":
            continue
        event, args = line["event"], line["args"]
        where = f"{sock.name}: {event} {args} (room {room})"
        if event == "match-done":
            # (a match-done while in a room is fine: this socket left it itself, by Next)
            room = args[0]["roomId"]
            partner = args[0]["remoteUserDetails"]["socket"]
            assert partner != sock.sid, f"{where}: matched with itself"
        elif event == "stop-by-remote-user":
            assert room is not None, f"{where}: stop-by-remote-user outside a room"
            assert args == [], where
            room = partner = None
        elif event in RELAYED:
            assert room is not None, f"{where}: relayed outside a room"
            payload = args[0]
            if "roomId" in payload:
                assert payload["roomId"] == room, where
            if event == "Message:recived":
                assert payload["from"] in (sock.sid, partner), where
            elif event == "negotiation-call-offer":
                assert payload["remoteUserDetails"]["socket"] == partner, where
            elif event == "negotiation-call-answer":
                assert payload["remoteSocketId"] == partner, where
            elif payload["candidate"] is not None:
                tag = payload["candidate"]["usernameFragment"]
                assert tag in ("f00d", None, partner), f"{where}: candidate from {tag}"


# -- matching -------------------------------------------------------------------------


async def test_match_done_to_both_with_one_initiator(live: Live) -> None:
    a, b = await live.join("a"), await live.join("b")
    match_a, match_b = await pair(a, b, "  Ann  ", "Bob", IMAGE, "")
    assert match_a["roomId"] == match_b["roomId"]
    assert isinstance(match_a["roomId"], str) and match_a["roomId"]
    assert match_a == {"roomId": match_a["roomId"], "initiator": True, "remoteUserDetails": {
        "socket": b.sid, "userName": "Bob", "userImage": ""}}
    assert match_b == {"roomId": match_a["roomId"], "initiator": False, "remoteUserDetails": {
        "socket": a.sid, "userName": "Ann", "userImage": IMAGE}}  # name trimmed
    status = await live.status()
    assert status["queue"] == {"size": 0, "users": []}
    assert status["rooms"] == {"active": 1, "total": 1}
    health = await http_get(live.url, "/")
    assert health.status == 200 and health.json() == {"status": "OK",
                                                      "message": "Hello, TypeScript!"}
    live.check_all()


async def test_no_self_match_and_no_double_queue(live: Live) -> None:
    a, b, c, d = [await live.join(n) for n in "abcd"]
    assert await call(a, "request-room", request("Ann")) == OK
    status = await live.status_until(lambda s: s["queue"]["size"] == 1)
    # Alone in the queue, and not paired with itself.
    assert status["queue"]["users"] == ["Ann"] and status["rooms"]["total"] == 0
    # Asking again while queued changes nothing and acks ok (not even rate-limited).
    assert await call(a, "request-room", request("Ann")) == OK
    again = await live.status()
    assert (again["queue"], again["rooms"]) == (status["queue"], status["rooms"])
    match_a, match_b = await pair(a, b)  # a asks a third time: still nothing changes
    assert match_a["remoteUserDetails"]["socket"] == b.sid and match_a["initiator"] is True
    assert match_b["remoteUserDetails"]["socket"] == a.sid and match_b["initiator"] is False
    # a was queued once: the next two people are paired together, not with a ghost of a.
    match_c, match_d = await pair(c, d, "Cat", "Dan")
    assert match_c["remoteUserDetails"]["socket"] == d.sid
    assert match_d["remoteUserDetails"]["socket"] == c.sid
    status = await live.status()
    assert status["queue"] == {"size": 0, "users": []}
    assert status["rooms"] == {"active": 2, "total": 2}
    # barrier: b's candidate reaches a after anything the server sent a before it
    assert await call(b, "send-new-ice-candidates", ice(b)) == OK
    await receive(a, "new-ice-candidates")
    assert unread_events(a) == [] and unread_events(c) == []
    live.check_all()


async def test_relay_offer_answer_ice_and_chat(live: Live) -> None:
    a, b = await live.join("a"), await live.join("b")
    match_a, _ = await pair(a, b)
    room = match_a["roomId"]

    # offer: a's spoofed name is ignored; the partner sees the name from request-room
    assert await call(a, "negotiation-call-offer", {
        "offer": OFFER, "roomId": room, "name": "Mallory", "remoteSocketId": b.sid}) == OK
    assert await receive(b, "negotiation-call-offer") == {
        "remoteUserDetails": {"socket": a.sid, "userName": "Ann"}, "roomId": room,
        "offer": OFFER}

    # answer: target fields may be left out
    assert await call(b, "negotiation-call-answer", {"ans": ANSWER}) == OK
    assert await receive(a, "negotiation-call-answer") == {
        "ans": ANSWER, "roomId": room, "name": "Bob", "remoteSocketId": b.sid}

    # ICE both ways: full, partial (absent members become null), and the null candidate
    assert await call(a, "send-new-ice-candidates", {"to": b.sid, "candidate": CANDIDATE}) == OK
    assert await receive(b, "new-ice-candidates") == {"candidate": CANDIDATE}
    partial = {"candidate": "candidate:2 1 tcp 1 192.0.2.2 9 typ host"}
    assert await call(a, "send-new-ice-candidates", {"candidate": partial}) == OK
    assert await receive(b, "new-ice-candidates") == {"candidate": {
        **partial, "sdpMid": None, "sdpMLineIndex": None, "usernameFragment": None}}
    assert await call(a, "send-new-ice-candidates", {"to": b.sid, "candidate": None}) == OK
    assert await receive(b, "new-ice-candidates") == {"candidate": None}
    assert await call(b, "send-new-ice-candidates", {"candidate": None}) == OK
    assert await receive(a, "new-ice-candidates") == {"candidate": None}

    # chat: both members get Message:recived, `from` stamped by the server
    assert await call(a, "newMessage", {"message": "hello", "roomId": room,
                                        "remoteSocket": b.sid, "from": "spoofed"}) == OK
    expected = {"from": a.sid, "message": "hello"}
    assert await receive(a, "Message:recived") == expected
    assert await receive(b, "Message:recived") == expected
    assert await call(b, "newMessage", {"message": "hi Ann"}) == OK
    expected = {"from": b.sid, "message": "hi Ann"}
    assert await receive(b, "Message:recived") == expected
    assert await receive(a, "Message:recived") == expected  # the last thing a was sent

    # Nothing else reached anyone (no echo of one's own offer/answer/candidates).
    assert unread_events(a) == [] and unread_events(b) == []
    live.check_all()


# -- ending calls -----------------------------------------------------------------------


async def test_next_requeues_both_and_cooldown_keeps_them_apart(live_unlimited: Live) -> None:
    live = live_unlimited
    a, b, c, d = [await live.join(n) for n in "abcd"]
    match_a, _ = await pair(a, b)
    # "Next": request-room from inside the room, with the current roomId (and a new name)
    assert await call(a, "request-room", request("Ann2", IMAGE, match_a["roomId"])) == OK
    assert await receive(b, "stop-by-remote-user") is None
    # b is back in the queue: asking again while queued changes nothing and acks ok, and
    # its answer means b's place in the queue was requested before anything c does next.
    assert await call(b, "request-room", request("Bob")) == OK
    # a and b both wait, but are cooling down: a third person is paired with one of them,
    # a fourth with the other (we do not wait for the 60 s cooldown).
    assert await call(c, "request-room", request("Cat")) == OK
    match_c = await receive(c, "match-done")
    first = a if match_c["remoteUserDetails"]["socket"] == a.sid else b
    other = b if first is a else a
    assert match_c["remoteUserDetails"]["socket"] == first.sid
    assert match_c["remoteUserDetails"]["userName"] == ("Ann2" if first is a else "Bob")
    match_first = await receive(first, "match-done")
    assert match_first["remoteUserDetails"]["socket"] == c.sid
    assert match_first["initiator"] is True  # it waited longer than c
    status = await live.status()
    assert status["queue"] == {"size": 1, "users": ["Bob" if other is b else "Ann2"]}
    assert status["rooms"] == {"active": 1, "total": 2}
    assert await call(d, "request-room", request("Dan")) == OK
    match_d = await receive(d, "match-done")
    assert match_d["remoteUserDetails"]["socket"] == other.sid
    assert (await receive(other, "match-done"))["remoteUserDetails"]["socket"] == d.sid
    status = await live.status()
    assert status["queue"]["size"] == 0 and status["rooms"] == {"active": 2, "total": 3}
    # The caller of "Next" is not told stop-by-remote-user; barriers from the new partners.
    assert await call(c, "send-new-ice-candidates", ice(c)) == OK
    assert await call(d, "send-new-ice-candidates", ice(d)) == OK
    await receive(first, "new-ice-candidates")
    await receive(other, "new-ice-candidates")
    assert unread_events(a) == [] and unread_events(b) == []
    live.check_all()


async def test_next_with_a_stale_room_id_is_refused_but_still_next(live_unlimited: Live
                                                                   ) -> None:
    live = live_unlimited
    a, b, c, d = [await live.join(n) for n in "abcd"]
    await pair(a, b)
    match_c, _ = await pair(c, d, "Cat", "Dan")
    # a names c's room: invalid-room, but it is still a "Next" from a's own room
    await refused(a, "request-room", request("Ann", "", match_c["roomId"]), "invalid-room")
    assert await receive(b, "stop-by-remote-user") is None
    # a and b both queued, cooling down; c and d untouched
    status = await live.status_until(lambda s: s["queue"]["size"] == 2)
    assert sorted(status["queue"]["users"]) == ["Ann", "Bob"]
    assert status["rooms"] == {"active": 1, "total": 2}
    assert await call(c, "send-new-ice-candidates", ice(c)) == OK
    assert await call(d, "send-new-ice-candidates", ice(d)) == OK
    await receive(d, "new-ice-candidates")
    await receive(c, "new-ice-candidates")
    assert unread_events(c) == [] and unread_events(d) == []
    live.check_all()


async def test_stop_call(live: Live) -> None:
    a, b, c, d, e = [await live.join(n) for n in "abcde"]
    match_a, _ = await pair(a, b)
    assert await call(a, "stop-call", {"roomId": match_a["roomId"], "remoteSocketId": b.sid,
                                       "name": "Ann"}) == OK
    assert await receive(b, "stop-by-remote-user") is None
    # b is re-queued (its answer orders it before c); a, the caller, is idle.
    assert await call(b, "request-room", request("Bob")) == OK
    assert await call(c, "request-room", request("Cat")) == OK
    assert (await receive(c, "match-done"))["remoteUserDetails"]["socket"] == b.sid
    assert (await receive(b, "match-done"))["remoteUserDetails"]["socket"] == c.sid
    status = await live.status()
    assert status["queue"] == {"size": 0, "users": []}
    assert status["rooms"] == {"active": 1, "total": 2}
    await refused(a, "stop-call", {}, "not-in-room")
    await refused(a, "send-new-ice-candidates", {"candidate": None}, "not-in-room")
    # stop-call while queued leaves the queue (no payload at all is fine)
    assert await call(d, "request-room", request("Dan")) == OK
    await live.status_until(lambda s: s["queue"]["users"] == ["Dan"])
    assert await call(d, "stop-call") == OK
    await live.status_until(lambda s: s["queue"]["size"] == 0)
    assert await call(e, "request-room", request("Eve")) == OK
    status = await live.status_until(lambda s: s["queue"]["size"] == 1)
    assert status["queue"]["users"] == ["Eve"] and status["rooms"]["total"] == 2
    assert unread_events(a) == [] and unread_events(d) == []
    live.check_all()


async def test_disconnect_while_queued(live: Live) -> None:
    a, b, c = [await live.join(n) for n in "abc"]
    assert await call(a, "request-room", request("Ann")) == OK
    await live.status_until(lambda s: s["queue"]["users"] == ["Ann"])
    with trio.fail_after(DEADLINE):
        await live.driver.disconnect(socket="a")
        await a.wait("disconnect")
    await live.status_until(lambda s: s["queue"]["size"] == 0)
    # a later client is not paired with the ghost
    assert await call(b, "request-room", request("Bob")) == OK
    status = await live.status_until(lambda s: s["queue"]["size"] == 1)
    assert status["queue"]["users"] == ["Bob"] and status["rooms"]["total"] == 0
    assert await call(c, "request-room", request("Cat")) == OK
    assert (await receive(b, "match-done"))["remoteUserDetails"]["socket"] == c.sid
    assert (await receive(c, "match-done"))["remoteUserDetails"]["socket"] == b.sid
    live.check_all()


async def test_disconnect_in_a_room(live: Live) -> None:
    a, b, c = [await live.join(n) for n in "abc"]
    await pair(a, b)
    with trio.fail_after(DEADLINE):
        await live.driver.disconnect(socket="b")
    assert await receive(a, "stop-by-remote-user") is None
    assert await call(a, "request-room", request("Ann")) == OK  # queued again already
    assert await call(c, "request-room", request("Cat")) == OK
    match_a = await receive(a, "match-done")
    assert match_a["remoteUserDetails"]["socket"] == c.sid and match_a["initiator"] is True
    assert (await receive(c, "match-done"))["remoteUserDetails"]["socket"] == a.sid
    status = await live.status()
    assert status["queue"]["size"] == 0 and status["rooms"] == {"active": 1, "total": 2}
    live.check_all()


# -- refusals ---------------------------------------------------------------------------


async def test_spoofing_is_refused_and_relays_nothing(live: Live) -> None:
    a, b, c, d, e = [await live.join(n) for n in "abcde"]
    match_a, _ = await pair(a, b)
    match_c, _ = await pair(c, d, "Cat", "Dan")
    mine, theirs = match_a["roomId"], match_c["roomId"]
    attempts: list[tuple[str, dict[str, Any], str]] = [
        ("negotiation-call-offer", {"offer": OFFER, "remoteSocketId": c.sid}, "invalid-target"),
        ("negotiation-call-offer", {"offer": OFFER, "roomId": theirs}, "invalid-room"),
        ("negotiation-call-offer", {"offer": OFFER, "roomId": mine, "remoteSocketId": d.sid},
         "invalid-target"),
        ("negotiation-call-answer", {"ans": ANSWER, "remoteSocketId": d.sid},
         "invalid-target"),
        ("negotiation-call-answer", {"ans": ANSWER, "roomId": "no-such-room"}, "invalid-room"),
        ("send-new-ice-candidates", {"to": c.sid, "candidate": CANDIDATE}, "invalid-target"),
        ("send-new-ice-candidates", {"to": "nobody", "candidate": None}, "invalid-target"),
        ("newMessage", {"message": "psst", "remoteSocket": c.sid}, "invalid-target"),
        ("newMessage", {"message": "psst", "roomId": theirs}, "invalid-room"),
        ("stop-call", {"roomId": theirs}, "invalid-room"),
        ("stop-call", {"remoteSocketId": c.sid}, "invalid-target"),
        ("stop-call", {"roomId": mine, "remoteSocketId": e.sid}, "invalid-target"),
    ]
    for event, payload, code in attempts:
        await refused(a, event, payload, code)
    # someone in no room at all
    strangers: list[tuple[str, dict[str, Any]]] = [
        ("negotiation-call-offer", {"offer": OFFER, "remoteSocketId": a.sid}),
        ("negotiation-call-answer", {"ans": ANSWER}),
        ("send-new-ice-candidates", {"to": c.sid, "candidate": CANDIDATE}),
        ("newMessage", {"message": "hi", "remoteSocket": d.sid, "roomId": theirs}),
        ("stop-call", {"roomId": mine, "remoteSocketId": a.sid}),
    ]
    for event, payload in strangers:
        await refused(e, event, payload, "not-in-room")
    # Barriers: both rooms still relay (no refused stop-call ended anything), and what
    # each member receives now comes after anything the attempts could have caused.
    for sender, receiver in ((a, b), (b, a), (c, d), (d, c)):
        assert await call(sender, "send-new-ice-candidates", ice(sender)) == OK
        payload = await receive(receiver, "new-ice-candidates")
        assert payload["candidate"]["usernameFragment"] == sender.sid
    for sock in (a, b, c, d, e):
        assert unread_events(sock) == [], sock.name
    status = await live.status()
    assert status["rooms"] == {"active": 2, "total": 2} and status["queue"]["size"] == 0
    live.check_all()


async def test_rate_limits_with_default_settings(live: Live) -> None:
    a, b, c = [await live.join(n) for n in "abc"]
    # request-room: 1 per 5 s. Leaving the queue and asking again at once is refused.
    assert await call(a, "request-room", request("Ann")) == OK
    assert await call(a, "stop-call") == OK
    error = await refused(a, "request-room", request("Ann"), "rate-limited")
    assert 0 < error["retryAfter"] <= 5
    # "Next" too soon is refused as well, and ends nothing.
    await pair(b, c, "Bob", "Cat")
    error = await refused(b, "request-room", request("Bob"), "rate-limited")
    assert 0 < error["retryAfter"] <= 5
    # newMessage: 10 per minute; the 11th is refused and not relayed
    for i in range(10):
        assert await call(b, "newMessage", {"message": f"m{i}"}) == OK
    for sock in (b, c):
        for i in range(10):
            assert await receive(sock, "Message:recived") == {"from": b.sid, "message": f"m{i}"}
    error = await refused(b, "newMessage", {"message": "one too many"}, "rate-limited")
    assert 0 < error["retryAfter"] <= 60
    # the limit is per connection: c still talks
    assert await call(c, "newMessage", {"message": "mine"}) == OK
    for sock in (c, b):
        assert await receive(sock, "Message:recived") == {"from": c.sid, "message": "mine"}
    # ICE candidates: unlimited
    for i in range(40):
        candidate = {**CANDIDATE, "candidate": f"candidate:{i} 1 udp 1 192.0.2.1 {i} typ host"}
        assert await call(b, "send-new-ice-candidates", {"candidate": candidate}) == OK
    for i in range(40):
        payload = await receive(c, "new-ice-candidates")
        assert payload["candidate"]["candidate"].startswith(f"candidate:{i} ")
    # b is still in its room with c (the refused Next ended nothing)
    assert unread_events(b) == [] and unread_events(c) == []
    status = await live.status()
    assert status["rooms"] == {"active": 1, "total": 1} and status["queue"]["size"] == 0
    live.check_all()


INVALID: list[tuple[str, Any]] = [
    ("request-room", {}),
    ("request-room", {"name": "   ", "userImage": ""}),
    ("request-room", {"name": "x" * 41}),
    ("request-room", {"name": 42}),
    ("request-room", {"name": "Ann\nBob"}),
    ("request-room", {"name": "Ann", "userImage": "https://example.com/a.png"}),
    ("request-room", {"name": "Ann", "userImage": "data:image/png;base64,@@@"}),
    ("request-room", {"name": "Ann", "userImage": "data:image/png;base64," + "A" * 65536}),
    ("request-room", {"name": "Ann", "userImage": 7}),
    ("request-room", {"name": "Ann", "roomId": 7}),
    ("request-room", "Ann"),
    ("request-room", None),
    ("request-room", NOTHING),
    ("negotiation-call-offer", {}),
    ("negotiation-call-offer", {"offer": {"type": "answer", "sdp": "v=0"}}),
    ("negotiation-call-offer", {"offer": {"type": "offer", "sdp": "v" * 20001}}),
    ("negotiation-call-offer", {"offer": "v=0"}),
    ("negotiation-call-answer", {"ans": {"type": "offer", "sdp": "v=0"}}),
    ("negotiation-call-answer", {"ans": {"type": "answer"}}),
    ("send-new-ice-candidates", {}),
    ("send-new-ice-candidates", {"candidate": "candidate:1 1 udp 1 192.0.2.1 1 typ host"}),
    ("send-new-ice-candidates", {"candidate": {"candidate": "c", "sdpMLineIndex": -1}}),
    ("send-new-ice-candidates", {"candidate": {"candidate": "c" * 2001}}),
    ("newMessage", {}),
    ("newMessage", {"message": ""}),
    ("newMessage", {"message": " \t "}),
    ("newMessage", {"message": "x" * 1001}),
    ("newMessage", {"message": 5}),
    ("stop-call", {"roomId": 5}),
    ("stop-call", "now"),
]


async def test_validation_errors_leave_the_connection_usable(live: Live) -> None:
    a, b = await live.join("a"), await live.join("b")
    for event, payload in INVALID:
        await refused(a, event, payload, "invalid-payload")
    error = await refused(a, "hello", {"x": 1}, "unknown-event")
    assert error["event"] == "hello"
    # Nothing was queued and nothing counted against the rate limit: a is usable.
    status = await live.status()
    assert status["queue"]["size"] == 0 and status["rooms"]["total"] == 0
    match_a, _ = await pair(a, b)
    # in a room, invalid payloads are still refused and relay nothing...
    for event, payload in INVALID[13:]:
        if event != "stop-call":
            await refused(a, event, payload, "invalid-payload")
    # ...and the call goes on
    assert await call(a, "negotiation-call-offer", {"offer": OFFER,
                                                    "roomId": match_a["roomId"]}) == OK
    assert (await receive(b, "negotiation-call-offer"))["offer"] == OFFER
    assert unread_events(a) == [] and unread_events(b) == []
    live.check_all()


async def test_oversize_packet_closes_only_the_offender(live: Live) -> None:
    a, b, c = [await live.join(n) for n in "abc"]
    await pair(a, b)
    # beyond maxPayload (100 000 bytes): a protocol violation, b's connection is closed
    await b.emit("newMessage", {"message": "x" * 150_000})
    with trio.fail_after(DEADLINE):
        await b.wait("disconnect")
    assert await receive(a, "stop-by-remote-user") is None
    assert await call(a, "request-room", request("Ann")) == OK
    assert await call(c, "request-room", request("Cat")) == OK
    assert (await receive(a, "match-done"))["remoteUserDetails"]["socket"] == c.sid
    assert (await receive(c, "match-done"))["remoteUserDetails"]["socket"] == a.sid
    live.check_all()


# -- status -------------------------------------------------------------------------------


async def test_status_counts(live: Live) -> None:
    status = await live.status()
    assert set(status) == {"queue", "rooms", "timestamp"}
    assert status["queue"] == {"size": 0, "users": []}
    assert status["rooms"] == {"active": 0, "total": 0}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", status["timestamp"])
    stamp = datetime.datetime.strptime(status["timestamp"], "%Y-%m-%dT%H:%M:%S%z")
    assert abs(stamp - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=1)

    a, b, c, d = [await live.join(n) for n in "abcd"]

    def counts(size: int, users: list[str], active: int, total: int
               ) -> Callable[[dict[str, Any]], bool]:
        return lambda s: (s["queue"] == {"size": size, "users": users}
                          and s["rooms"] == {"active": active, "total": total})

    assert await call(a, "request-room", request("Ann", IMAGE)) == OK
    await live.status_until(counts(1, ["Ann"], 0, 0))
    assert await call(b, "request-room", request("Bob")) == OK
    await receive(a, "match-done")
    await receive(b, "match-done")
    assert counts(0, [], 1, 1)(await live.status())
    assert await call(c, "request-room", request("Cat")) == OK
    document = await live.status_until(counts(1, ["Cat"], 1, 1))
    # names only: never socket ids or thumbnails
    text = json.dumps(document)
    assert all(s.sid not in text for s in (a, b, c, d)) and "base64" not in text
    assert await call(d, "request-room", request("Dan")) == OK
    await receive(c, "match-done")
    await receive(d, "match-done")
    assert counts(0, [], 2, 2)(await live.status())
    # a stops: b goes back to the queue
    assert await call(a, "stop-call") == OK
    await receive(b, "stop-by-remote-user")
    await live.status_until(counts(1, ["Bob"], 1, 2))
    # c leaves: d goes back to the queue and meets b (no cooldown after stop/disconnect)
    with trio.fail_after(DEADLINE):
        await live.driver.disconnect(socket="c")
    await receive(d, "stop-by-remote-user")
    assert (await receive(b, "match-done"))["remoteUserDetails"]["socket"] == d.sid
    assert (await receive(d, "match-done"))["remoteUserDetails"]["socket"] == b.sid
    assert counts(0, [], 1, 3)(await live.status())
    live.check_all()


# -- ordering -------------------------------------------------------------------------------


async def test_nothing_of_an_old_room_after_a_new_match(live_unlimited: Live) -> None:
    live = live_unlimited
    a, b, c, d = [await live.join(n) for n in "abcd"]
    await pair(a, b)
    assert await call(c, "request-room", request("Cat")) == OK
    # b floods a with candidates while a presses "Next": a is re-matched at once (c waits)
    async with trio.open_nursery() as nursery:

        async def flood() -> None:
            for _ in range(40):
                await b.emit("send-new-ice-candidates", ice(b))

        nursery.start_soon(flood)
        assert await call(a, "request-room", request("Ann")) == OK
    await receive(b, "stop-by-remote-user")
    assert await call(d, "request-room", request("Dan")) == OK
    # a and b each end up with c or d (never together: they are cooling down)
    for sock in (a, b):
        match = await receive(sock, "match-done")
        assert match["remoteUserDetails"]["socket"] in (c.sid, d.sid)
    for sock in (c, d):
        match = await receive(sock, "match-done")
        assert match["remoteUserDetails"]["socket"] in (a.sid, b.sid)
        partner = a if match["remoteUserDetails"]["socket"] == a.sid else b
        # barrier: after this candidate, nothing older can reach the partner
        assert await call(sock, "send-new-ice-candidates", ice(sock)) == OK

        def from_sock(line: dict[str, Any], s: Sock = sock) -> bool:
            return bool(line["args"][0]["candidate"]["usernameFragment"] == s.sid)

        with trio.fail_after(DEADLINE):
            await partner.receive("new-ice-candidates", from_sock)
    for sock in (a, b, c, d):
        sock.unread()
    live.check_all()  # nothing from b after a's new match-done (and so on for everyone)


async def test_stop_by_remote_user_never_precedes_its_match(live_unlimited: Live) -> None:
    live = live_unlimited
    e = await live.join("e")
    assert await call(e, "request-room", request("Eve")) == OK
    # Each newcomer asks and stops at once: e may or may not be matched with them first.
    for name in ("f1", "f2", "f3"):
        f = await live.join(name)
        assert await call(f, "request-room", request(name)) == OK
        assert await call(f, "stop-call") == OK
    g = await live.join("g")
    assert await call(g, "request-room", request("Gus")) == OK
    match = await receive(g, "match-done")
    assert match["remoteUserDetails"]["socket"] == e.sid
    with trio.fail_after(DEADLINE):
        await e.wait("event", "match-done",
                     lambda line: line["args"][0]["remoteUserDetails"]["socket"] == g.sid)
    events = [line["event"] for line in e.log if line["type"] == "event"]
    # e's life: (match-done, stop-by-remote-user) for each newcomer it met, then g.
    assert events == ["match-done", "stop-by-remote-user"] * (len(events) // 2) + [
        "match-done"], events
    for sock in live.socks:
        sock.unread()
    live.check_all()
