"""``liveloop bench cuts``: relays through connections cut at a steady rate.

Pairs of ``liveloop.client`` users (``--clients`` / 2 pairs). In each pair, "a" reaches
the server through a :class:`~liveloop.bench.proxy.CuttingProxy` run by the bench, "b"
connects straight. Every ``--cut-every`` seconds the proxy resets every "a" connection at
once. An "a" reconnects after ``RECONNECT_DELAY`` (as the official client does), passing
its session on (``open_client(previous=...)``), so a server that recovers connections
(Live Loop, Node's socket.io with ``connectionStateRecovery``) keeps the pair together.

Traffic, for ``--duration`` seconds:

- down: "b" sends ICE candidates to "a" at ``--rate`` per second, numbered (``sdpMid``);
  the server's replay is what delivers those written into a dead connection;
- up: "a" sends chat lines to "b" at ``--rate`` / 5 per second, each with an ``id``,
  resent with the same id until acked (the official client's ``retries``); a server that
  drops repeated ids delivers each once.

The report counts, per direction: sent, delivered (distinct numbers received), duplicated
(received more than once), lost (sent, never received); and the reconnections, with how
many came back recovered. It needs a server with rate limits off (chat).
"""

from __future__ import annotations

import collections
import time
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio

from ..client import (
    ChatMessage,
    Disconnected,
    IceCandidateReceived,
    LiveLoopClient,
    LiveLoopEvent,
    RemoteStopped,
    open_client,
)
from .proxy import CuttingProxy

RECONNECT_DELAY = 0.5
"""Seconds an "a" waits before reconnecting (the official client: 0.5 to 1.5 s)."""


@attrs.define
class ReconnectingClient:
    """A ``liveloop.client`` user that reconnects after every lost connection, as the
    official client does (after ``reconnect_delay``), passing its session on
    (``open_client(previous=...)``) so that a server that recovers connections keeps it.
    A subclass records what it needs in the hooks :meth:`on_connect` and
    :meth:`on_event`. Set ``stop`` to let it end after its connection does."""

    url: str
    reconnect_delay: float = RECONNECT_DELAY
    client: LiveLoopClient | None = None
    """The connection as it is now (None before the first)."""
    connections: int = 0
    """How many connections it has made, the first one included."""
    stop: bool = False
    _connected: trio.Event = attrs.Factory(trio.Event)
    """Set by each new connection, then replaced for the next."""

    def on_connect(self, client: LiveLoopClient) -> None:
        """Each new connection, the first included (``connections`` counts them)."""

    def on_event(self, event: LiveLoopEvent) -> None:
        """Each event received, on whichever connection."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Connect, then reconnect after each lost connection until ``stop``; started
        once the first connection is made."""
        previous: LiveLoopClient | None = None
        while not self.stop:
            try:
                async with open_client(self.url, previous=previous) as client:
                    self.client = previous = client
                    self.connections += 1
                    self.on_connect(client)
                    self._connected.set()
                    self._connected = trio.Event()
                    if self.connections == 1:
                        task_status.started()
                    async for event in client.events():
                        self.on_event(event)
            except (OSError, Disconnected):
                pass
            except BaseExceptionGroup as group:  # trio-websocket's handshake failures
                if not group.subgroup((OSError, Disconnected)):
                    raise
            await trio.sleep(self.reconnect_delay)

    async def send_message(self, text: str, event_id: str) -> bool:
        """Send until acked, through cuts, with the same id each time (a server that
        drops repeated ids delivers it once); whether the server accepted it. False if
        it refused it (the pair was split: nothing more to do) or ``stop`` came first."""
        while not self.stop:
            client = self.client
            try:
                if client is not None and not client.sio.closed:
                    return (await client.send_message(text, id=event_id)).ok
            except Disconnected:
                pass
            # Until the next connection; bounded, to see ``stop``.
            with trio.move_on_after(self.reconnect_delay * 4):
                while self.client is client:
                    await self._connected.wait()
        return False


@attrs.define
class _Side(ReconnectingClient):
    """One "a": its reconnections, and what it received."""

    reconnects: int = 0
    recovered: int = 0
    got: collections.Counter[str] = attrs.Factory(collections.Counter)
    stopped_by_remote: int = 0

    def on_connect(self, client: LiveLoopClient) -> None:
        if self.connections > 1:
            self.reconnects += 1
            self.recovered += client.recovered

    def on_event(self, event: LiveLoopEvent) -> None:
        if isinstance(event, IceCandidateReceived) and event.candidate:
            self.got[str(event.candidate.get("sdpMid"))] += 1
        elif isinstance(event, RemoteStopped):
            self.stopped_by_remote += 1


async def run_cuts(url: str, pairs: int, rate: float, duration: float, cut_every: float,
                   grace: float) -> dict[str, Any]:
    """The scenario; its report (see the module docstring)."""
    parts = urlsplit(url)
    assert parts.port is not None, "the URL needs a port"
    proxy = CuttingProxy(parts.port)
    down_sent = [0] * pairs
    up_sent = 0
    up_got: collections.Counter[str] = collections.Counter()
    sides: list[_Side] = []
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        proxied = await nursery.start(proxy.run)
        bs = [await stack.enter_async_context(open_client(url)) for _ in range(pairs)]
        for index, b in enumerate(bs):
            side = _Side(proxied)
            await nursery.start(side.run)
            sides.append(side)
            assert side.client is not None
            await side.client.request_room(f"a{index}")
            await b.request_room(f"b{index}")
            await b.next_match()  # "a"'s match-done goes to its reader, side.run
        stop_at = trio.current_time() + duration
        started = time.monotonic()

        async def down(b: LiveLoopClient, index: int) -> None:
            while trio.current_time() < stop_at:
                await b.send_ice({"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host",
                                  "sdpMid": str(down_sent[index]), "sdpMLineIndex": 0},
                                 ack=False)
                down_sent[index] += 1
                await trio.sleep(1 / rate)

        async def up(side: _Side, index: int) -> None:
            nonlocal up_sent
            n = 0
            while trio.current_time() < stop_at:
                if not await side.send_message(str(n), f"{index}-{n}"):
                    break
                n += 1
                up_sent += 1
                await trio.sleep(5 / rate)

        async def listen(b: LiveLoopClient, a_sid: str, index: int) -> None:
            async for event in b.events():
                if isinstance(event, ChatMessage) and event.sender == a_sid:
                    up_got[f"{index}-{event.message}"] += 1

        async def cut() -> None:
            while trio.current_time() + cut_every < stop_at:
                await trio.sleep(cut_every)
                proxy.cut()

        async with trio.open_nursery() as load:
            for index, (b, side) in enumerate(zip(bs, sides, strict=True)):
                assert side.client is not None
                load.start_soon(down, b, index)
                load.start_soon(up, side, index)
                nursery.start_soon(listen, b, side.client.sid, index)
            load.start_soon(cut)
        await trio.sleep(grace)  # the last replays and retries land
        for side in sides:
            side.stop = True
        nursery.cancel_scope.cancel()
    down_report = {"sent": 0, "delivered": 0, "duplicated": 0, "lost": 0}
    for side, sent in zip(sides, down_sent, strict=True):
        got = side.got
        delivered = sum(1 for n in range(sent) if got[str(n)] > 0)
        down_report["sent"] += sent
        down_report["delivered"] += delivered
        down_report["duplicated"] += sum(max(0, got[str(n)] - 1) for n in range(sent))
        down_report["lost"] += sent - delivered
    return {
        "scenario": "cuts", "pairs": pairs, "rate": rate, "duration": duration,
        "cut_every": cut_every, "cuts": proxy.cuts, "seconds": time.monotonic() - started,
        "down": down_report,
        "up": {"sent": up_sent, "delivered": len(up_got),
               "duplicated": sum(count - 1 for count in up_got.values()),
               "lost": max(0, up_sent - len(up_got))},
        "reconnects": sum(s.reconnects for s in sides),
        "recovered": sum(s.recovered for s in sides),
        "stop_by_remote_user": sum(s.stopped_by_remote for s in sides),
    }


def format_cuts(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    lines = [f"cuts: {report['pairs']} pairs, {report['rate']:g} relays/s down per pair, "
             f"a cut every {report['cut_every']:g} s ({report['cuts']} cuts) over "
             f"{report['duration']:g} s"]
    for key in ("down", "up"):
        d = report[key]
        share = 100 * d["delivered"] / d["sent"] if d["sent"] else 0.0
        lines.append(f"  {key:>4}: sent {d['sent']}, delivered {d['delivered']} "
                     f"({share:.1f}%), duplicated {d['duplicated']}, lost {d['lost']}")
    lines.append(f"  reconnects {report['reconnects']}, recovered {report['recovered']}, "
                 f"stop-by-remote-user {report['stop_by_remote_user']}")
    return "\n".join(lines)
