"""Connection state recovery, in-process, frame by frame, under Trio's autojump clock.

The Live Loop app is served over the in-memory ASGI WebSocket of :mod:`tests.asgi`. A
"cut" is the client's transport going away (``websocket.disconnect``) with whatever the
server had written still unread: those packets are lost, as on a dead TCP connection.
The tests through a real TCP proxy, with the official client, are in
``test_recovery_live.py``.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio
import trio.testing

from liveloop.app import RootApp
from liveloop.config import Settings
from liveloop.metrics import Metrics
from liveloop.server import socketio_server
from liveloop.server.api import JSON, Ack, Socket, SocketHandler
from liveloop.server.recovery import History
from liveloop.service import LiveLoop

from .asgi import WebSocket, websocket
from .conftest import CANDIDATE

PATH = "/socket.io/"
WS = {"EIO": "4", "transport": "websocket"}
BASE = Settings(rate_limits=False, recovery_window=20.0)


@attrs.define
class Client:
    """One raw Socket.IO client over one in-memory WebSocket."""

    ws: WebSocket
    sid: str = ""
    pid: str | None = None
    offset: str | None = None
    replayed: list[list[Any]] = attrs.Factory(list)
    acks: dict[int, list[Any]] = attrs.Factory(dict)
    pending: list[list[Any]] = attrs.Factory(list)
    """Events read while waiting for an ack, for :meth:`until`."""
    _ack_id: int = 0

    async def frame(self) -> str:
        """The next Socket.IO text frame (pings are answered on the way)."""
        while True:
            data = await self.ws.receive()
            assert isinstance(data, str)
            if data == "2":
                await self.ws.send("3")
                continue
            assert data.startswith("4"), data
            return data[1:]

    async def event(self) -> list[Any]:
        """The next EVENT's ``[name, *args]``, its offset taken off (and remembered);
        acks met on the way are kept in :attr:`acks`."""
        if self.pending:
            return self.pending.pop(0)
        while True:
            event = await self._next()
            if event is not None:
                return event

    async def _next(self) -> list[Any] | None:
        """The next packet: an EVENT's ``[name, *args]``, or None for an ack (kept)."""
        frame = await self.frame()
        if frame.startswith("3"):
            head, _, body = frame[1:].partition("[")
            self.acks[int(head)] = json.loads("[" + body)
            return None
        assert frame.startswith("2["), frame
        return self._strip(json.loads(frame[1:]))

    def _strip(self, data: list[Any]) -> list[Any]:
        if self.pid is not None:
            assert isinstance(data[-1], str) and data[-1].isdigit(), data
            self.offset = data.pop()
        return data

    async def until(self, name: str) -> list[Any]:
        """The next event ``name``, events met before it (or kept by :meth:`call`)
        dropped."""
        while self.pending:
            event = self.pending.pop(0)
            if event[0] == name:
                return event
        while True:
            event = await self.event()
            if event[0] == name:
                return event

    async def call(self, event: str, payload: JSON = None) -> Any:
        """Emit with an ack; the ack's argument (events met first are dropped)."""
        ack_id = self._ack_id = self._ack_id + 1
        args = [event] if payload is None else [event, payload]
        await self.ws.send(f"42{ack_id}" + json.dumps(args))
        while ack_id not in self.acks:
            got = await self._next()
            if got is not None:
                self.pending.append(got)
        return self.acks.pop(ack_id)[0]

    async def emit(self, event: str, payload: JSON) -> None:
        await self.ws.send("42" + json.dumps([event, payload]))


@attrs.define
class Harness:
    app: RootApp
    nursery: trio.Nursery

    async def _hold(self, *, task_status: trio.TaskStatus[WebSocket]) -> None:
        # Each connection lives in a task of the test's nursery, which ends them all.
        async with websocket(self.app, PATH, WS) as ws:
            task_status.started(ws)
            await trio.sleep_forever()

    async def connect(self, auth: dict[str, Any] | None = None,
                      resume: Client | None = None) -> Client:
        ws: WebSocket = await self.nursery.start(self._hold)
        opened = await ws.receive()
        assert isinstance(opened, str) and opened.startswith("0")
        client = Client(ws)
        data = dict(auth or {})
        if resume is not None:
            data["pid"] = resume.pid
            if resume.offset is not None:
                data["offset"] = resume.offset
            client.pid, client.offset = resume.pid, resume.offset
        await ws.send("40" + json.dumps(data))
        while True:
            frame = await client.frame()
            if frame.startswith("2["):  # a replay comes before the CONNECT answer
                client.replayed.append(client._strip(json.loads(frame[1:])))
                continue
            assert frame.startswith("0"), frame
            answer = json.loads(frame[1:])
            client.sid, client.pid = answer["sid"], answer.get("pid")
            return client

    service: LiveLoop

    async def status(self) -> dict[str, Any]:
        """``/api/status``'s document, once the matchmaker has handled what is sent."""
        await trio.testing.wait_all_tasks_blocked()
        return self.service.status()


async def serve(nursery: trio.Nursery, metrics: Metrics | None = None,
                **overrides: Any) -> Harness:
    """Live Loop as ``create_app`` builds it, without the REST app."""
    settings = attrs.evolve(BASE, **overrides)
    service = LiveLoop(settings, metrics)
    app = RootApp({PATH: socketio_server(settings, {"/": service.namespace}, metrics)},
                  None, (service.run,))
    await nursery.start(app.run)
    return Harness(app, nursery, service)


async def pair(h: Harness) -> tuple[Client, Client, str]:
    a, b = await h.connect(), await h.connect()
    assert await a.call("request-room", {"name": "Ann"}) == {"ok": True}
    assert await b.call("request-room", {"name": "Bob"}) == {"ok": True}
    room = (await a.until("match-done"))[1]["roomId"]
    await b.until("match-done")
    return a, b, room


async def cut(client: Client) -> None:
    """The transport is lost; what the server wrote and the client did not read is lost."""
    await client.ws.disconnect()


async def quiet(seconds: float) -> None:
    await trio.sleep(seconds)


# -- the wire ---------------------------------------------------------------------------


async def test_connect_answer_has_a_pid_and_events_carry_offsets(
        nursery: trio.Nursery) -> None:
    h = await serve(nursery)
    a = await h.connect()
    assert a.pid is not None and a.pid != a.sid
    await a.ws.send('421["stop-call"]')  # refused: an error-message event, then the ack
    raw = await a.frame()
    name, payload, offset = json.loads(raw[1:])
    assert name == "error-message" and payload["code"] == "not-in-room" and offset == "1"
    assert await a.frame() == '31[{"ok":false,"error":{"code":"not-in-room",' \
                              '"message":"you are not in a call"}}]'  # acks: no offset


async def test_recovery_opt_out_in_auth(nursery: trio.Nursery,
                                        ) -> None:
    seen: list[JSON] = []

    class Echo:
        async def connect(self, socket: Socket, auth: JSON) -> SocketHandler:
            seen.append(auth)
            socket.emit("hello", 1)
            return _Quiet()

    engine = socketio_server(BASE, {"/": Echo()})
    await nursery.start(engine.run)
    async with websocket(engine, PATH, WS) as ws:
        await ws.receive()
        await ws.send('40{"recovery":false,"token":"t"}')
        assert list(json.loads((await ws.receive())[2:])) == ["sid"]
        assert await ws.receive() == '42["hello",1]'
        await ws.send('40/x,{"pid":"nope","offset":"3","token":"u"}')
        await ws.receive()
    async with websocket(engine, PATH, WS) as ws:
        await ws.receive()
        await ws.send('40{"pid":"unknown","offset":"7","token":"v"}')
        answer = json.loads((await ws.receive())[2:])
        assert set(answer) == {"sid", "pid"}  # an unknown pid: a new session, no error
        assert await ws.receive() == '42["hello",1,"1"]'
    assert seen == [{"token": "t"}, {"token": "v"}]  # recovery's keys never reach the app


class _Quiet:
    async def on_event(self, event: str, args: list[JSON], ack: Ack | None) -> None:
        pass

    async def on_message(self, message: object) -> None:
        pass

    async def on_recover(self) -> None:
        pass

    async def on_disconnect(self, reason: str) -> None:
        pass


# -- recovering ---------------------------------------------------------------------------


async def test_a_cut_in_a_call_recovers_state_and_every_missed_packet(
        nursery: trio.Nursery,
        autojump_clock: trio.testing.MockClock) -> None:
    h = await serve(nursery)
    a, b, room = await pair(h)
    # B sends while A is connected, but A reads none of it: written into a dying
    # connection, lost on the wire. Then the cut, then more while A is away.
    for n in range(3):
        assert await b.call("send-new-ice-candidates",
                            {"candidate": {**CANDIDATE, "sdpMid": str(n)}}) == {"ok": True}
    await cut(a)
    await quiet(1)
    for n in range(3, 5):
        assert await b.call("send-new-ice-candidates",
                            {"candidate": {**CANDIDATE, "sdpMid": str(n)}}) == {"ok": True}
    assert await b.call("newMessage", {"message": "still there?"}) == {"ok": True}
    await quiet(5)
    back = await h.connect(resume=a)
    assert back.sid == a.sid and back.pid == a.pid
    mids = [e[1]["candidate"]["sdpMid"] for e in back.replayed if e[0] == "new-ice-candidates"]
    assert mids == ["0", "1", "2", "3", "4"]
    assert back.replayed[-1] == ["Message:recived", {"from": b.sid, "message": "still there?"}]
    # the same call goes on, both ways; the partner never heard of the cut
    assert await back.call("newMessage", {"message": "yes", "roomId": room}) == {"ok": True}
    assert (await b.until("Message:recived"))[1]["message"] == "still there?"
    assert (await b.until("Message:recived"))[1] == {"from": a.sid, "message": "yes"}
    assert await b.call("stop-call") == {"ok": True}
    assert (await back.until("stop-by-remote-user")) == ["stop-by-remote-user"]


async def test_only_what_follows_the_clients_offset_is_replayed(
        nursery: trio.Nursery) -> None:
    h = await serve(nursery)
    a, b, _ = await pair(h)
    for n in range(4):
        await b.emit("send-new-ice-candidates", {"candidate": {**CANDIDATE, "sdpMid": str(n)}})
    for n in range(2):
        assert (await a.until("new-ice-candidates"))[1]["candidate"]["sdpMid"] == str(n)
    await cut(a)
    back = await h.connect(resume=a)
    assert [e[1]["candidate"]["sdpMid"] for e in back.replayed] == ["2", "3"]
    assert back.offset is not None and int(back.offset) == int(a.offset or 0) + 2


async def test_a_pid_without_offset_recovers(nursery: trio.Nursery,
                                             ) -> None:
    h = await serve(nursery)
    a = await h.connect()
    await cut(a)
    back = await h.connect(resume=a)
    assert back.sid == a.sid and back.replayed == []


async def test_an_offset_older_than_the_history_still_recovers(
        nursery: trio.Nursery) -> None:
    h = await serve(nursery, recovery_packets=3)
    a, b, _ = await pair(h)
    for n in range(10):
        await b.call("send-new-ice-candidates", {"candidate": {**CANDIDATE, "sdpMid": str(n)}})
    await cut(a)
    back = await h.connect(resume=a)
    assert back.sid == a.sid  # recovered: only the oldest events are missing
    assert [e[1]["candidate"]["sdpMid"] for e in back.replayed] == ["7", "8", "9"]
    assert await back.call("send-new-ice-candidates", {"candidate": CANDIDATE}) == {"ok": True}


async def test_a_whole_history_replayed_into_the_smallest_outbox_allowed(
        nursery: trio.Nursery) -> None:
    """recovery_packets one below outbox_size (the most Settings allows): the replay and
    the CONNECT answer fill the outbox exactly, and the session goes on."""
    h = await serve(nursery, recovery_packets=3, outbox_size=4)
    a, b, _ = await pair(h)
    for n in range(10):
        await b.call("send-new-ice-candidates", {"candidate": {**CANDIDATE, "sdpMid": str(n)}})
    await cut(a)
    back = await h.connect(resume=a)
    assert back.sid == a.sid
    assert [e[1]["candidate"]["sdpMid"] for e in back.replayed] == ["7", "8", "9"]
    assert await back.call("send-new-ice-candidates", {"candidate": CANDIDATE}) == {"ok": True}


async def test_an_older_connection_still_open_is_closed_by_the_recovery(
        nursery: trio.Nursery) -> None:
    h = await serve(nursery)
    a, b, _ = await pair(h)
    back = await h.connect(resume=a)  # the first one was never noticed as lost
    assert back.sid == a.sid
    assert await a.ws.closed() == 1000
    await b.emit("newMessage", {"message": "hi"})
    assert (await back.until("Message:recived"))[1]["message"] == "hi"
    # and a later cut of the new connection recovers again (socket.io issue #4880)
    await cut(back)
    again = await h.connect(resume=back)
    assert again.sid == a.sid


async def test_a_client_disconnect_is_not_recoverable(
        nursery: trio.Nursery) -> None:
    h = await serve(nursery)
    a, b, _ = await pair(h)
    await a.ws.send("41")
    assert await b.until("stop-by-remote-user") == ["stop-by-remote-user"]
    await cut(a)
    fresh = await h.connect(resume=a)
    assert fresh.sid != a.sid and fresh.pid != a.pid and fresh.replayed == []


async def test_the_window_passing_ends_the_call_as_a_disconnect_would(
        nursery: trio.Nursery,
        autojump_clock: trio.testing.MockClock) -> None:
    h = await serve(nursery, recovery_window=20.0)
    a, b, _ = await pair(h)
    await cut(a)
    start = trio.current_time()
    assert await b.until("stop-by-remote-user") == ["stop-by-remote-user"]
    assert 20.0 <= trio.current_time() - start < 20.5  # noticed at once (a closed transport)
    status = await h.status()
    assert status["queue"]["users"] == ["Bob"]  # the partner is back in the queue
    fresh = await h.connect(resume=a)
    assert fresh.sid != a.sid  # expired: an ordinary new connection


async def test_away_sockets_and_recoveries_are_counted(
        nursery: trio.Nursery,
        autojump_clock: trio.testing.MockClock) -> None:
    from .test_metrics import read, value

    metrics = Metrics(process=False)
    h = await serve(nursery, metrics, recovery_window=5.0)
    a, b, _ = await pair(h)

    async def counts() -> tuple[float, float, float]:
        await trio.testing.wait_all_tasks_blocked()
        found = read(metrics)
        return (value(found, "liveloop_away_sockets"),
                value(found, "liveloop_recoveries_total", outcome="succeeded"),
                value(found, "liveloop_recoveries_total", outcome="failed"))

    assert await counts() == (0, 0, 0)
    await cut(a)
    assert await counts() == (1, 0, 0)
    back = await h.connect(resume=a)
    assert back.sid == a.sid
    assert await counts() == (0, 1, 0)
    await cut(back)
    assert await counts() == (1, 1, 0)
    await b.until("stop-by-remote-user")  # the window passed
    assert await counts() == (0, 1, 1)


async def test_a_queued_person_away_keeps_their_place_and_is_not_matched(
        nursery: trio.Nursery,
        autojump_clock: trio.testing.MockClock) -> None:
    h = await serve(nursery)
    a = await h.connect()
    assert await a.call("request-room", {"name": "Ann"}) == {"ok": True}
    await cut(a)
    await quiet(1)
    c = await h.connect()
    assert await c.call("request-room", {"name": "Cat"}) == {"ok": True}
    await quiet(5)
    status = await h.status()
    assert status["queue"]["users"] == ["Ann", "Cat"] and status["rooms"]["total"] == 0
    back = await h.connect(resume=a)
    assert back.sid == a.sid and back.replayed == []
    match = (await back.until("match-done"))[1]
    assert match["remoteUserDetails"]["socket"] == c.sid and match["initiator"] is True


async def test_rate_limits_survive_a_recovery(
        nursery: trio.Nursery,
        autojump_clock: trio.testing.MockClock) -> None:
    h = await serve(nursery, rate_limits=True, messages_per_minute=2)
    a, b = await h.connect(), await h.connect()
    assert await a.call("request-room", {"name": "Ann"}) == {"ok": True}
    assert await b.call("request-room", {"name": "Bob"}) == {"ok": True}
    await a.until("match-done")
    for text in ("one", "two"):
        assert await a.call("newMessage", {"message": text}) == {"ok": True}
    await cut(a)
    back = await h.connect(resume=a)
    refused = await back.call("newMessage", {"message": "three"})
    assert refused["error"]["code"] == "rate-limited"


async def test_a_partner_hanging_up_meanwhile_is_in_the_replay(
        nursery: trio.Nursery,
        autojump_clock: trio.testing.MockClock) -> None:
    h = await serve(nursery)
    a, b, _ = await pair(h)
    await cut(a)
    assert await b.call("stop-call") == {"ok": True}
    await quiet(3)
    back = await h.connect(resume=a)
    assert back.replayed == [["stop-by-remote-user"]]
    status = await h.status()
    assert status["queue"]["users"] == ["Ann"]  # re-queued, as for a disconnect today


async def test_flooding_an_away_person_gives_the_recovery_up(
        nursery: trio.Nursery,
        autojump_clock: trio.testing.MockClock) -> None:
    h = await serve(nursery, recovery_packets=5)
    a, b, _ = await pair(h)
    await cut(a)
    start = trio.current_time()
    for _ in range(6):
        assert await b.call("send-new-ice-candidates", {"candidate": CANDIDATE}) == {"ok": True}
    assert await b.until("stop-by-remote-user") == ["stop-by-remote-user"]
    assert trio.current_time() - start < 1  # at once, not when the window passes
    fresh = await h.connect(resume=a)
    assert fresh.sid != a.sid  # the person was treated as gone
    status = await h.status()
    assert status["queue"]["users"] == ["Bob"]


async def test_a_repeated_event_id_is_relayed_once_and_acked_again(
        nursery: trio.Nursery) -> None:
    h = await serve(nursery)
    a, b, _ = await pair(h)
    for _ in range(2):
        assert await a.call("newMessage", {"message": "hi", "id": "m1"}) == {"ok": True}
    assert await a.call("newMessage", {"message": "hi", "id": "m2"}) == {"ok": True}
    got = [(await b.until("Message:recived"))[1] for _ in range(2)]
    assert got == [{"from": a.sid, "message": "hi", "id": "m1"},
                   {"from": a.sid, "message": "hi", "id": "m2"}]
    offer = {"type": "offer", "sdp": "v=0\r\n"}
    for _ in range(2):
        assert await a.call("negotiation-call-offer", {"offer": offer, "id": "o1"}) == {
            "ok": True}
    assert await a.call("newMessage", {"message": "end"}) == {"ok": True}
    relayed = (await b.until("negotiation-call-offer"))[1]
    assert relayed["id"] == "o1"
    assert (await b.event())[0] == "Message:recived"  # no second offer before it


# -- the history on its own -----------------------------------------------------------------


def test_history_is_a_ring_while_present_and_bounded_while_away() -> None:
    history = History(max_packets=3, max_bytes=1000)
    for n in range(5):
        history.stamp()
        assert history.keep((f"42[{n}]",))
    frames, complete = history.after("1")
    assert frames == ["42[2]", "42[3]", "42[4]"] and not complete
    assert history.after("4") == (["42[4]"], True)
    assert history.after(None)[0] == frames  # never received anything: all held
    assert history.after("not ours")[0] == frames
    history.mark_away()
    kept = []
    for n in range(5, 8):
        history.stamp()
        kept.append(history.keep((f"42[{n}]",)))
    assert kept == [True, True, True]  # the old ones made room
    history.stamp()
    assert history.keep(("42[8]",)) is False  # the away ones alone exceed the bound
    history.mark_back()


def test_a_history_goes_on_elsewhere_with_its_offsets() -> None:
    from liveloop.server.recovery import Exported

    history = History(max_packets=3, max_bytes=1 << 20)
    for text in ("a", "b", "c", "d"):
        history.stamp()
        history.keep(text)
    history.stamp()
    history.keep(("451-[\"x\"]", b"\x00\xff"))  # a binary packet: text and attachment
    seq, entries = history.export()
    sent = Exported("pid", "sid", "/", seq, tuple(entries), {"phase": "idle"})
    back = Exported.from_json(json.loads(json.dumps(sent.to_json())))
    assert back == sent
    elsewhere = History(max_packets=2, max_bytes=1 << 20)
    elsewhere.restore(back.seq, back.entries)
    # Bounded to the newest two there: after offset 3, everything is still held.
    assert elsewhere.after("3") == (["d", "451-[\"x\"]", b"\x00\xff"], True)
    assert elsewhere.stamp() == "6"  # offsets go on


def test_history_bytes_bound() -> None:
    history = History(max_packets=100, max_bytes=10)
    history.stamp()
    history.keep(("x" * 8,))
    history.stamp()
    history.keep(("y" * 8,))
    assert history.packets == 1 and history.size == 8


def test_recovery_is_on_by_default_and_off_for_the_protocol_suites() -> None:
    """``liveloop serve`` and the hypercorn entry build their settings with
    ``Settings.from_env``; ``liveloop conformance`` with ``Settings.conformance()``."""
    assert Settings.from_env({}).recovery_window == 20.0
    assert Settings.from_env({"LIVELOOP_RECOVERY_WINDOW": "0"}).recovery_window == 0.0
    assert Settings.from_env({}).conformance().recovery_window == 0.0
