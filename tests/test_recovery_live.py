"""Connection state recovery against the real server, through a TCP proxy that cuts.

Clients nobody here wrote: the official npm ``socket.io-client`` at its defaults
(polling first, then the upgrade), WebSocket-only and polling-only, with its own
reconnection; and Live Loop's own ``liveloop.client``. Only the side that is cut goes
through :class:`~tests.proxy.CuttingProxy`; its partner connects straight.

The steady-cut test runs in real time (about 30 s, all three clients at once); the others
are short. Every wait is on a client event under ``trio.fail_after``; ``trio.sleep`` only
paces what the test sends and when it cuts, never decides an outcome.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import trio

from liveloop.app import create_app
from liveloop.bench.cuts import ReconnectingClient
from liveloop.client import (
    ChatMessage,
    IceCandidateReceived,
    LiveLoopClient,
    LiveLoopEvent,
    Match,
    RemoteStopped,
    open_client,
)
from liveloop.config import Settings

from .conftest import CANDIDATE, DEADLINE, Sock, events, http_get, join, pair, start_server
from .nodeclient import NodeClient
from .proxy import CuttingProxy

CUT_EVERY = 3.0
CUTS = 10  # 30 s of steady cuts
RETRYING = {"reconnection": True, "retries": 50, "ack_timeout": 1000}
"""A cut client's options: reconnect, and retry an event whose ack did not come."""


@attrs.frozen
class Served:
    url: str
    proxied: str
    proxy: CuttingProxy


async def serve(nursery: trio.Nursery, **overrides: Any) -> Served:
    settings = attrs.evolve(Settings(bind="127.0.0.1:0", rate_limits=False), **overrides)
    url = await start_server(nursery, create_app(settings), settings)
    proxy = CuttingProxy(int(url.rsplit(":", 1)[1]))
    proxied = await nursery.start(proxy.run)
    return Served(url, proxied, proxy)


def connects(sock: Sock) -> list[dict[str, Any]]:
    sock.unread()
    return [line for line in sock.log if line.get("type") == "connect"]


# -- liveloop.client, reconnecting as the official client does ----------------------------


class Reconnecting(ReconnectingClient):
    """The bench's reconnecting ``liveloop.client`` user, recording every event and
    every connect's ``recovered`` and sid."""

    def __init__(self, url: str) -> None:
        super().__init__(url, reconnect_delay=0.2)
        self.events: list[LiveLoopEvent] = []
        self.recovered: list[bool] = []
        self.sids: list[str] = []
        self._news = trio.Event()

    def on_connect(self, client: LiveLoopClient) -> None:
        self.recovered.append(client.recovered)
        self.sids.append(client.sid)

    def on_event(self, event: LiveLoopEvent) -> None:
        self.events.append(event)
        self._news.set()

    async def wait_chat(self, event_id: str) -> None:
        """Until a chat message with ``event_id`` has arrived."""
        while not any(isinstance(e, ChatMessage) and e.id == event_id for e in self.events):
            self._news = trio.Event()
            await self._news.wait()


# -- the steady-cut test ----------------------------------------------------------------


@attrs.define
class Traffic:
    """What one pair sent, by sender, for the checks."""

    to_a_ice: list[str] = attrs.Factory(list)
    to_a_chat: list[str] = attrs.Factory(list)
    from_a_chat: list[str] = attrs.Factory(list)


async def test_steady_cuts_lose_and_duplicate_nothing(nursery: trio.Nursery,
                                                     node: NodeClient) -> None:
    served = await serve(nursery)
    # Three pairs; only each pair's "a" goes through the proxy.
    na = await join(node, "na", served.proxied, **RETRYING)
    nb = await join(node, "nb", served.url)
    await pair(na, nb)
    wa = await join(node, "wa", served.proxied, transports=["websocket"], **RETRYING)
    wb = await join(node, "wb", served.url, transports=["websocket"])
    await pair(wa, wb)
    la = Reconnecting(served.proxied)
    await nursery.start(la.run)
    async with open_client(served.url) as lb:
        with trio.fail_after(DEADLINE):
            assert (await la.client.request_room("Lea")).ok  # type: ignore[union-attr]
            assert (await lb.request_room("Leo")).ok
            await lb.next_match()
        traffic = {"node": Traffic(), "ws": Traffic(), "py": Traffic()}
        done = trio.Event()

        async def node_b_sends(b: Sock, t: Traffic) -> None:
            for n in itertools.count():
                if done.is_set():
                    return
                mid = f"{b.name}{n}"
                await b.emit("send-new-ice-candidates", {"candidate": {**CANDIDATE,
                                                                       "sdpMid": mid}})
                t.to_a_ice.append(mid)
                if n % 5 == 0:
                    await b.emit("newMessage", {"message": mid, "id": mid})
                    t.to_a_chat.append(mid)
                await trio.sleep(0.1)

        async def node_a_sends(a: Sock, t: Traffic) -> None:
            for n in itertools.count():
                if done.is_set():
                    return
                mid = f"{a.name}{n}"
                assert await a.call("newMessage", {"message": mid, "id": mid},
                                  ack_timeout=1.0) == {"ok": True}
                t.from_a_chat.append(mid)
                await trio.sleep(0.3)

        async def py_b_sends(t: Traffic) -> None:
            for n in itertools.count():
                if done.is_set():
                    return
                mid = f"lb{n}"
                await lb.send_ice({**CANDIDATE, "sdpMid": mid}, ack=False)
                t.to_a_ice.append(mid)
                if n % 5 == 0:
                    await lb.send_message(mid, id=mid, ack=False)
                    t.to_a_chat.append(mid)
                await trio.sleep(0.1)

        async def py_a_sends(t: Traffic) -> None:
            for n in itertools.count():
                if done.is_set():
                    return
                mid = f"la{n}"
                assert await la.send_message(mid, mid)
                t.from_a_chat.append(mid)
                await trio.sleep(0.3)

        running: set[str] = set()

        async def sender(name: str, send: Any, *args: Any) -> None:
            running.add(name)
            await send(*args)
            running.discard(name)

        async with trio.open_nursery() as senders:
            senders.start_soon(sender, "nb", node_b_sends, nb, traffic["node"])
            senders.start_soon(sender, "na", node_a_sends, na, traffic["node"])
            senders.start_soon(sender, "wb", node_b_sends, wb, traffic["ws"])
            senders.start_soon(sender, "wa", node_a_sends, wa, traffic["ws"])
            senders.start_soon(sender, "lb", py_b_sends, traffic["py"])
            senders.start_soon(sender, "la", py_a_sends, traffic["py"])
            for _ in range(CUTS):
                await trio.sleep(CUT_EVERY)
                served.proxy.cut()
            done.set()
            senders.cancel_scope.deadline = trio.current_time() + DEADLINE
        assert not senders.cancel_scope.cancelled_caught, (
            "a sender was stuck", running, la.recovered)
        # Barrier: a last chat each way, after everything else each side sent.
        with trio.fail_after(DEADLINE):
            for a, b, t in ((na, nb, traffic["node"]), (wa, wb, traffic["ws"])):
                assert await b.call("newMessage", {"message": "end", "id": "end-b"}) == {
                    "ok": True}
                t.to_a_chat.append("end-b")
                await a.wait("event", "Message:recived",
                             lambda line: line["args"][0].get("id") == "end-b")
                assert await a.call("newMessage", {"message": "end", "id": "end-a"},
                                  ack_timeout=1.0) == {"ok": True}
                t.from_a_chat.append("end-a")
                await b.wait("event", "Message:recived",
                             lambda line: line["args"][0].get("id") == "end-a")
            await lb.send_message("end", id="end-b")
            traffic["py"].to_a_chat.append("end-b")
            assert await la.send_message("end", "end-a")
            traffic["py"].from_a_chat.append("end-a")
            await la.wait_chat("end-b")
            seen_by_lb: list[LiveLoopEvent] = []
            while not any(isinstance(e, ChatMessage) and e.id == "end-a" for e in seen_by_lb):
                seen_by_lb.append(await lb.receive())
        la.stop = True
        assert served.proxy.cuts == CUTS

        # The official client, both transports' setups
        for a, b, t in ((na, nb, traffic["node"]), (wa, wb, traffic["ws"])):
            got_ice = [line["args"][0]["candidate"]["sdpMid"]
                       for line in events(a, "new-ice-candidates")]
            assert got_ice == t.to_a_ice, a.name  # every relay once, in order
            chat_a = [line["args"][0] for line in events(a, "Message:recived")]
            assert [c["id"] for c in chat_a if c["from"] == b.sid] == t.to_a_chat
            assert [c["id"] for c in chat_a if c["from"] == a.sid] == t.from_a_chat
            chat_b = [line["args"][0] for line in events(b, "Message:recived")]
            assert [c["id"] for c in chat_b if c["from"] == a.sid] == t.from_a_chat
            assert events(a, "stop-by-remote-user") == events(b, "stop-by-remote-user") == []
            assert len(events(a, "match-done")) == len(events(b, "match-done")) == 1
            again = connects(a)[1:]
            assert len(again) >= CUTS // 2, again  # it was cut, and came back, many times
            assert all(line["recovered"] and line["sid"] == a.sid for line in again), again
            assert [line for line in b.log if line.get("type") == "disconnect"] == []

        # liveloop.client
        t = traffic["py"]
        got = [e.candidate["sdpMid"] for e in la.events
               if isinstance(e, IceCandidateReceived) and e.candidate is not None]
        assert got == t.to_a_ice
        chats = [e for e in la.events if isinstance(e, ChatMessage)]
        assert [c.id for c in chats if c.sender != la.sids[0]] == t.to_a_chat
        assert [c.id for c in chats if c.sender == la.sids[0]] == t.from_a_chat
        assert [c.id for c in seen_by_lb if isinstance(c, ChatMessage)
                and c.sender == la.sids[0]] == t.from_a_chat
        assert not any(isinstance(e, RemoteStopped | Match) for e in la.events[1:])
        assert len(la.recovered) >= CUTS // 2 and all(la.recovered[1:]), la.recovered
        assert set(la.sids) == {la.sids[0]}


# -- shorter ones -------------------------------------------------------------------------


async def test_a_cut_longer_than_the_window_ends_the_call(nursery: trio.Nursery,
                                                          node: NodeClient) -> None:
    window = 2.0
    served = await serve(nursery, recovery_window=window, ping_interval=1.0,
                         ping_timeout=1.0)
    a = await join(node, "a", served.proxied, transports=["websocket"], reconnection=True)
    b = await join(node, "b", served.url, transports=["websocket"])
    await pair(a, b)
    # A closed connection: the server notices at once, the partner hears after the window.
    served.proxy.refusing = True
    served.proxy.cut()
    start = trio.current_time()
    with trio.fail_after(window + DEADLINE):
        await b.wait("event", "stop-by-remote-user")
    assert trio.current_time() - start >= window * 0.9
    with trio.fail_after(DEADLINE):
        status = (await http_get(served.url, "/api/status")).json()
        while status["queue"]["users"] != ["Bob"]:  # re-queued
            await trio.sleep(0.02)  # poll without spinning against the server
            status = (await http_get(served.url, "/api/status")).json()
    served.proxy.refusing = False
    with trio.fail_after(DEADLINE):
        line = await a.wait("connect")
    assert line["recovered"] is False and line["sid"] != a.sid  # an ordinary new session
    # Silent: nothing is closed, the heartbeat finds out (ping interval + timeout), then
    # the window passes.
    with trio.fail_after(DEADLINE):
        assert await b.call("stop-call", {}) == {"ok": True}  # Bob leaves the queue
    c = await join(node, "c", served.url, transports=["websocket"])
    d = await join(node, "d", served.proxied, transports=["websocket"])
    await pair(c, d)
    served.proxy.refusing = True
    served.proxy.go_silent()
    start = trio.current_time()
    with trio.fail_after(2.0 + window + 2):
        await c.wait("event", "stop-by-remote-user")
    assert trio.current_time() - start >= window * 0.9


async def test_recovery_after_long_polling_is_cut(nursery: trio.Nursery,
                                                  node: NodeClient) -> None:
    # Short heartbeats: if the reset lands between two polls, the client may only notice
    # by its heartbeat (it has no connection open to be reset).
    served = await serve(nursery, ping_interval=1.0, ping_timeout=1.0)
    a = await join(node, "a", served.proxied, transports=["polling"], reconnection=True)
    b = await join(node, "b", served.url)
    await pair(a, b)
    with trio.fail_after(DEADLINE):
        served.proxy.refusing = True
        served.proxy.cut()
        await a.wait("disconnect")
        for n in range(3):
            await b.emit("send-new-ice-candidates", {"candidate": {**CANDIDATE,
                                                                   "sdpMid": str(n)}})
        assert await b.call("newMessage", {"message": "hi"}) == {"ok": True}
        served.proxy.refusing = False
        line = await a.wait("connect")
        assert line["recovered"] is True and line["sid"] == a.sid
        assert (await a.receive("Message:recived"))["message"] == "hi"
    mids = [line["args"][0]["candidate"]["sdpMid"] for line in events(a, "new-ice-candidates")]
    assert mids == ["0", "1", "2"]


async def test_the_official_clients_retries_make_no_duplicates(nursery: trio.Nursery,
                                                               node: NodeClient) -> None:
    served = await serve(nursery)
    a = await join(node, "a", served.proxied, transports=["websocket"], **RETRYING)
    b = await join(node, "b", served.url, transports=["websocket"])
    await pair(a, b)
    async with trio.open_nursery() as cutting:
        async def cut_soon() -> None:
            for _ in range(3):
                await trio.sleep(0.25)
                served.proxy.cut()

        cutting.start_soon(cut_soon)
        for n in range(12):
            with trio.fail_after(DEADLINE):
                assert await a.call("newMessage", {"message": str(n), "id": f"m{n}"},
                                  ack_timeout=0.3) == {"ok": True}
    with trio.fail_after(DEADLINE):
        await b.wait("event", "Message:recived", lambda line: line["args"][0]["id"] == "m11")
    got = [line["args"][0]["id"] for line in events(b, "Message:recived")]
    assert got == [f"m{n}" for n in range(12)]


async def test_python_socketio_with_and_without_the_opt_out(nursery: trio.Nursery) -> None:
    served = await serve(nursery)
    async with NodeClient("python") as py:
        plain = await join(py, "plain", served.url, transports=["websocket"])
        opted = await join(py, "opted", served.url, transports=["websocket"],
                           auth={"recovery": False})
        await pair(plain, opted)
        with trio.fail_after(DEADLINE):
            await plain.emit("newMessage", {"message": "hi"})
            raw_plain = await py.next("event", "Message:recived", socket="plain")
            raw_opted = await py.next("event", "Message:recived", socket="opted")
    # Without the opt-out, python-socketio's handler gets the offset as an extra
    # argument (a one-argument handler raises); with it, the seed's one argument.
    assert len(raw_plain["args"]) == 2 and raw_plain["args"][1].isdigit()
    assert raw_opted["args"] == [{"from": plain.sid, "message": "hi"}]


async def test_recovery_after_an_upgrade(nursery: trio.Nursery, node: NodeClient) -> None:
    served = await serve(nursery)
    a = await join(node, "a", served.proxied, reconnection=True)  # polling, then upgrade
    b = await join(node, "b", served.url)
    await pair(a, b)
    with trio.fail_after(DEADLINE):
        await a.wait("upgrade")
        served.proxy.refusing = True
        served.proxy.cut()
        await a.wait("disconnect")
        assert await b.call("newMessage", {"message": "after the upgrade"}) == {"ok": True}
        served.proxy.refusing = False
        line = await a.wait("connect")
        assert line["recovered"] is True and line["sid"] == a.sid
        assert (await a.receive("Message:recived"))["message"] == "after the upgrade"
