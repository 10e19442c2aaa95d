"""The load each bench worker generates: one Trio run with its share of the clients.

A worker runs one scenario's clients and reports to a :class:`Sync` at each phase of the
scenario (the coordinator samples the server at those instants and releases everyone at
once). It returns its measurements as a JSON-able dict.

Phases:
- relay: clients connect, request a room and learn their partner from ``match-done``;
  ``ready``; each sends ICE candidates to its partner at ``rate`` per second for
  ``duration`` seconds (open loop: a late sender catches up), then an end marker that
  says how many it sent; each waits for its partner's marker (``grace`` at most); ``done``.
- churn: clients connect; ``ready``; for ``duration`` seconds each requests a room and,
  when matched, the initiator ends the call (stop-call, "Next", or alternately) while the
  other, told ``stop-by-remote-user``, is back in the queue; ``done``.
- idle: ``start``; clients connect and hold; ``connected``; they stay ``duration``
  seconds; ``held``.
- slowhead: as idle, but each "client" is a TCP connection that sends the start of an
  HTTP request head and never finishes it (a slow or silent client): what such
  connections cost while ``LIVELOOP_HEADER_TIMEOUT`` lets them live (start the server
  with a header timeout longer than the run, and a per-address limit above ``clients``).
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio

from ..client import (
    IceCandidateReceived,
    LiveLoopClient,
    Match,
    RemoteStopped,
    ServerError,
    open_client,
)
from ..errors import ErrorCode

PHASES: dict[str, tuple[str, ...]] = {
    "relay": ("ready", "done"),
    "churn": ("ready", "done"),
    "idle": ("start", "connected", "held"),
    "slowhead": ("start", "connected", "held"),
}
"""Every scenario's phases, in order."""

COUNTERS = ("connected", "matched", "sent", "received", "matches", "errors")
"""The progress counters a worker publishes, in this order."""

MAX_SAMPLES = 200_000
"""Latency samples a worker keeps at most (a uniform reservoir beyond that)."""

_END = "end"
_HOLDING = ("idle", "slowhead")
_PARTIAL_HEAD = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: slow"


class RateLimited(Exception):
    """The server answered ``rate-limited``: it runs with rate limits on."""


class Sync(Protocol):
    """How a worker meets the coordinator."""

    async def arrive(self, phase: str) -> None:
        """Report ``phase`` reached; return when every worker has and the server is sampled."""

    def publish(self, counters: list[float]) -> None:
        """Show progress: the values of :data:`COUNTERS`."""


@attrs.frozen(kw_only=True)
class BenchConfig:
    """One bench run. Durations are seconds."""

    scenario: str
    url: str
    clients: int = 100
    rate: float = 1.0
    duration: float = 10.0
    workers: int = 1
    server_pid: int | None = None
    other_pids: tuple[int, ...] = ()
    """More processes whose CPU and memory count as the server's (other nodes, Redis)."""
    connect_concurrency: int = 50
    setup_timeout: float = 120.0
    grace: float = 5.0
    churn_mode: str = "mix"
    progress: bool = True


class _Reservoir:
    """Keeps at most ``MAX_SAMPLES`` of the values added, uniformly chosen."""

    __slots__ = ("count", "rng", "values")

    def __init__(self, seed: int) -> None:
        self.values: list[int] = []
        self.count = 0
        self.rng = random.Random(seed)

    def add(self, value: int) -> None:
        self.count += 1
        if len(self.values) < MAX_SAMPLES:
            self.values.append(value)
        else:
            slot = self.rng.randrange(self.count)
            if slot < MAX_SAMPLES:
                self.values[slot] = value


class Worker:
    """One worker's clients and counters."""

    def __init__(self, config: BenchConfig, index: int, clients: int, sync: Sync) -> None:
        self.config = config
        self.index = index
        self.clients = clients
        self.sync = sync
        self.counters = [0.0] * len(COUNTERS)
        self.latencies = _Reservoir(index)
        self.lateness = _Reservoir(index + 10_000)
        self.ttm = _Reservoir(index + 20_000)
        self.incomplete = 0
        self.errors: list[str] = []
        self.go = trio.Event()
        self.leave = trio.Event()
        self.all_ready = trio.Event()
        self.all_done = trio.Event()
        self._ready = 0
        self._done = 0
        self._opened = 0
        self.stop_at = 0.0
        """When the measured window ends, in Trio's clock."""
        self._slots = trio.Semaphore(max(1, config.connect_concurrency))

    # -- bookkeeping ---------------------------------------------------------------------

    def _count(self, counter: int, by: float = 1.0) -> None:
        self.counters[counter] += by

    def _ready_one(self) -> None:
        self._ready += 1
        if self._ready == self.clients:
            self.all_ready.set()

    def _done_one(self) -> None:
        self._done += 1
        if self._done == self.clients:
            self.all_done.set()

    async def _publish_progress(self) -> None:
        while True:
            self.sync.publish(self.counters)
            await trio.sleep(0.25)

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Run the scenario's clients through its phases; the worker's measurements."""
        raise_fd_limit()
        scenario = self.config.scenario
        client_fn: Callable[[int], Any] = {
            "relay": self._relay_client, "churn": self._churn_client, "idle": self._idle_client,
            "slowhead": self._slowhead_client,
        }[scenario]
        cpu: dict[str, float] = {}
        wall: dict[str, float] = {}

        def mark(name: str) -> None:
            cpu[name] = time.process_time()
            wall[name] = time.monotonic()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_progress)
            async with trio.open_nursery() as clients:
                if scenario in _HOLDING:
                    await self.sync.arrive("start")
                    mark("start")
                    self.go.set()
                for i in range(self.clients):
                    clients.start_soon(client_fn, i)
                if self.clients == 0:
                    self.all_ready.set()
                    self.all_done.set()
                with trio.fail_after(self.config.setup_timeout):
                    await self.all_ready.wait()
                if scenario in _HOLDING:
                    mark("connected")
                    await self.sync.arrive("connected")
                    mark("hold")
                    await trio.sleep(self.config.duration)
                    mark("held")
                    await self.sync.arrive("held")
                else:
                    await self.sync.arrive("ready")
                    mark("ready")
                    self.stop_at = trio.current_time() + self.config.duration
                    self.go.set()
                    with trio.fail_after(self.config.duration + self.config.grace
                                         + self.config.setup_timeout):
                        await self.all_done.wait()
                    mark("done")
                    await self.sync.arrive("done")
                self.leave.set()
            nursery.cancel_scope.cancel()
        self.sync.publish(self.counters)
        return self._result(cpu, wall)

    def _result(self, cpu: dict[str, float], wall: dict[str, float]) -> dict[str, Any]:
        first, last = (("start", "held") if self.config.scenario in _HOLDING
                       else ("ready", "done"))
        counters = dict(zip(COUNTERS, self.counters, strict=True))
        return {
            "worker": self.index,
            "clients": self.clients,
            "cpu_s": cpu[last] - cpu[first],
            "wall_s": wall[last] - wall[first],
            "counters": counters,
            "latency_us": self.latencies.values,
            "lateness_us": self.lateness.values,
            "ttm_us": self.ttm.values,
            "incomplete": self.incomplete,
            "errors": self.errors[:20],
        }

    @asynccontextmanager
    async def _connected(self, max_events: int = 4096) -> AsyncIterator[LiveLoopClient]:
        """A connected client; at most ``connect_concurrency`` handshakes at a time."""
        await self._slots.acquire()
        released = False
        try:
            async with open_client(self._next_url(), max_events=max_events) as client:
                self._slots.release()
                released = True
                self._count(0)
                yield client
        finally:
            if not released:
                self._slots.release()

    def _next_url(self) -> str:
        """The server for the next connection: several (nodes sharing Redis, comma-
        separated in ``--url``) are taken in turn, each worker starting at its own."""
        urls = self.config.url.split(",")
        url = urls[(self._opened + self.index) % len(urls)]
        self._opened += 1
        return url

    # -- relay ---------------------------------------------------------------------------

    async def _relay_client(self, index: int) -> None:
        config = self.config
        async with self._connected() as client:
            await _request(client, f"relay-{self.index}-{index}")
            match = await client.next_match()
            self._count(1)
            self._ready_one()
            expected: list[int] = []
            got_end = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._relay_receive, client, expected, got_end)
                await self.go.wait()
                sent = await self._relay_send(client, match, index)
                await client.send_ice({"candidate": _END, "sdpMid": "0", "sdpMLineIndex": 0,
                                       "usernameFragment": str(sent)}, ack=False)
                with trio.move_on_at(self.stop_at + config.grace):
                    await got_end.wait()
                if not got_end.is_set():
                    self.incomplete += 1
                self._done_one()
                await self.leave.wait()
                nursery.cancel_scope.cancel()

    async def _relay_send(self, client: LiveLoopClient, match: Match, index: int) -> int:
        config = self.config
        interval = 1.0 / config.rate
        count = int(config.duration * config.rate)
        rng = random.Random(self.index * 1_000_003 + index)
        start = time.monotonic() + rng.random() * interval
        sent_counter = 2
        lateness = self.lateness.add
        candidate: dict[str, Any] = {
            "candidate": f"candidate:{index} 1 udp 2122260223 192.0.2.{index % 250 + 1} "
                         f"{40000 + index % 20000} typ host generation 0",
            "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "",
        }
        monotonic, monotonic_ns = time.monotonic, time.monotonic_ns
        clock_offset = trio.current_time() - monotonic()
        for n in range(count):
            due = start + n * interval
            now = monotonic()
            if due > now:
                await trio.sleep_until(due + clock_offset)
            else:
                lateness(int((now - due) * 1e6))
            candidate["usernameFragment"] = str(monotonic_ns())
            await client.send_ice(candidate, ack=False)
            self.counters[sent_counter] += 1
        return count

    async def _relay_receive(self, client: LiveLoopClient, expected: list[int],
                             got_end: trio.Event) -> None:
        received = 0
        add = self.latencies.add
        counters = self.counters
        monotonic_ns = time.monotonic_ns
        while True:
            event = await client.receive()
            if type(event) is IceCandidateReceived and event.candidate is not None:
                fragment = event.candidate.get("usernameFragment")
                if event.candidate.get("candidate") == _END:
                    expected.append(int(str(fragment)))
                    got_end.set()
                    continue
                add((monotonic_ns() - int(str(fragment))) // 1000)
                received += 1
                counters[3] += 1
            elif isinstance(event, ServerError):
                self._error(event)

    # -- churn ---------------------------------------------------------------------------

    async def _churn_client(self, index: int) -> None:
        config = self.config
        async with self._connected() as client:
            self._ready_one()
            await self.go.wait()
            name = f"churn-{self.index}-{index}"
            rounds = 0
            with trio.move_on_at(self.stop_at):
                await _request(client, name)
                asked = time.monotonic()
                while True:
                    match = await client.next_match()
                    now = time.monotonic()
                    self.ttm.add(int((now - asked) * 1e6))
                    self._count(4)
                    if match.initiator:
                        rounds += 1
                        mode = config.churn_mode
                        if mode == "next" or (mode == "mix" and rounds % 2 == 0):
                            ack = await client.next_partner()
                        else:
                            ack = await client.stop_call()
                            if ack.ok:
                                ack = await client.request_room(name)
                        _check(ack.error.code if ack.error else None)
                    else:
                        await client.wait_for(RemoteStopped)
                    asked = time.monotonic()
            self._done_one()
            await self.leave.wait()

    # -- idle ----------------------------------------------------------------------------

    async def _idle_client(self, index: int) -> None:
        async with self._connected(max_events=16):
            self._ready_one()
            await self.leave.wait()

    async def _slowhead_client(self, index: int) -> None:
        url = self._next_url()
        host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
        async with self._slots:
            stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(_PARTIAL_HEAD)
            self._count(0)
            self._ready_one()
            await self.leave.wait()

    def _error(self, error: ServerError) -> None:
        self._count(5)
        _check(error.code)
        if len(self.errors) < 100:
            self.errors.append(f"{error.code}: {error.message} ({error.event})")


def _check(code: str | None) -> None:
    if code == ErrorCode.RATE_LIMITED:
        raise RateLimited("the server rate-limits: start it with --rate-limits off")


async def _request(client: LiveLoopClient, name: str) -> None:
    ack = await client.request_room(name)
    _check(ack.error.code if ack.error else None)
    if not ack.ok:
        raise RuntimeError(f"request-room refused: {ack.error}")


def raise_fd_limit() -> None:
    """Raise this process's open-files limit to its hard limit (for many connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
