"""Live Loop's Prometheus metrics: one :class:`Metrics` object per process, passed down.

The object owns its :class:`~prometheus_client.CollectorRegistry` (nothing is registered
in the library's global one), so every test and every app gets fresh counters. With
``enabled=False`` (``LIVELOOP_METRICS_BIND`` unset) every counter is a no-op, so a
process that nobody scrapes pays one empty method call where it would count.

Who counts what:

- the Engine.IO server: ``liveloop_connections{transport}``, ``liveloop_handshakes_total``,
  ``liveloop_disconnects_total{reason}`` and, for a close whose reason is one of
  :data:`OVERFLOW_REASONS`, ``liveloop_overflow_closes_total{buffer}``
  (:meth:`Metrics.session_opened`, :meth:`Metrics.upgraded`, :meth:`Metrics.session_ended`);
- the peer (the connection actor): ``liveloop_relayed_total{event}`` (the hot path: a
  lock-free :class:`Tally` per event, :attr:`Metrics.relayed`, read at scrape time),
  ``liveloop_errors_total{code}`` and ``liveloop_rate_limited_total{event}``
  (:meth:`Metrics.error`);
- the matchmaker: ``liveloop_time_to_match_seconds`` (:meth:`Metrics.matched`);
- read at scrape time from the matchmaker's published snapshot, the one ``GET
  /api/status`` shows, so both always agree: ``liveloop_queue_size``,
  ``liveloop_rooms_active`` and ``liveloop_matches_total`` (= ``rooms.total``);
- connection state recovery: ``liveloop_away_sockets`` and
  ``liveloop_recoveries_total{outcome}`` (:attr:`Metrics.away`, :attr:`Metrics.recoveries`);
- the limits: ``liveloop_refused_total{limit}`` through :meth:`Metrics.refused`, and
  overflow closes of any other buffer through :meth:`Metrics.overflow_close`.

Plus the library's process, platform and garbage-collector collectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any, Protocol

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_asgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from . import events
from .errors import ErrorCode
from .status import Snapshot

TRANSPORTS = ("polling", "websocket")
"""Values of ``liveloop_connections{transport}``."""

OVERFLOW_REASONS: Mapping[str, str] = {
    "outbox overflow": "outbox",
    "mailbox overflow": "mailbox",
}
"""Session close reasons that count as an overflow close, and the buffer they name. A
new bounded buffer whose close reason is added here is counted with no other change."""

REFUSAL_LIMITS = (
    "sessions", "connections_per_ip", "handshakes_per_ip", "draining",
    "body_timeout", "header_timeout", "relay_budget",
)
"""Values of ``liveloop_refused_total{limit}`` created up front (so they read 0 rather
than being absent); :meth:`Metrics.refused` also accepts others."""

RATE_LIMITED_EVENTS = (events.REQUEST_ROOM, events.NEW_MESSAGE, events.GET_ICE_SERVERS)
"""Events whose ``liveloop_rate_limited_total{event}`` exists from the start."""

TIME_TO_MATCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                         300.0)
"""Seconds; people wait from a blink (busy) to minutes (a quiet night)."""


class Increment(Protocol):
    """A counter (or its no-op stand-in) as the hot path sees it."""

    def inc(self, amount: float = 1) -> None: ...


class Level(Increment, Protocol):
    """A gauge (or its no-op stand-in)."""

    def dec(self, amount: float = 1) -> None: ...


class _Off:
    """Every metric when metrics are off: counts nothing."""

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def labels(self, *values: str, **labels: str) -> _Off:
        return self


_OFF = _Off()


class Tally:
    """A plain counter for the hot path: an attribute add, no lock (a prometheus-client
    ``Counter.inc`` costs a lock, checks and calls, about ten times as much). Only the
    Trio thread adds to it, and the exposition reads it in that thread too."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class _TallyCollector(Collector):
    """``liveloop_relayed_total{event}`` from the tallies, at scrape time."""

    def __init__(self, tallies: Mapping[str, Tally]) -> None:
        self._tallies = tallies

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "liveloop_relayed", "Events relayed to a partner (the sender's event name).",
            labels=["event"])
        for event, tally in self._tallies.items():
            family.add_metric([event], tally.value)
        yield family


class _SnapshotCollector(Collector):
    """The matchmaker's counts, read from its current snapshot at scrape time."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        now = self._snapshot()
        yield GaugeMetricFamily("liveloop_queue_size", "People waiting to be matched.",
                                value=now.queue_size)
        yield GaugeMetricFamily("liveloop_rooms_active", "Calls in progress.",
                                value=now.rooms_active)
        yield CounterMetricFamily("liveloop_matches", "Rooms created since the start.",
                                  value=now.rooms_total)


class Metrics:
    """Every Live Loop metric of one process. See the module docstring."""

    def __init__(self, *, enabled: bool = True, process: bool = True) -> None:
        """``process``: add the library's process, platform and GC collectors."""
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=True)
        self._snapshot: _SnapshotCollector | None = None
        self.urls: list[str] = []
        """Where :func:`serve_metrics` listens, once it does."""
        if not enabled:
            self.connections: Mapping[str, Level] = dict.fromkeys(TRANSPORTS, _OFF)
            self.handshakes: Increment = _OFF
            self.relayed: Mapping[type[events.Relayed], Increment] = _relayed_children(
                lambda event: _OFF)
            self._disconnects: Any = _OFF
            self._errors: Any = _OFF
            self._rate_limited: Any = _OFF
            self._overflow: Any = _OFF
            self._refused: Any = _OFF
            self._time_to_match: Any = _OFF
            self.away: Any = _OFF
            self.recoveries: Any = _OFF
            return
        registry = self.registry
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        connections = Gauge("liveloop_connections", "Open Engine.IO sessions.",
                            ["transport"], registry=registry)
        self.connections = {name: connections.labels(name) for name in TRANSPORTS}
        self.handshakes = Counter("liveloop_handshakes", "Engine.IO sessions opened.",
                                  registry=registry)
        self._disconnects = Counter("liveloop_disconnects", "Engine.IO sessions closed.",
                                    ["reason"], registry=registry)
        tallies: dict[str, Tally] = {}
        self.relayed = _relayed_children(lambda event: tallies.setdefault(event, Tally()))
        registry.register(_TallyCollector(tallies))
        self._errors = Counter("liveloop_errors", "Errors answered to clients.", ["code"],
                               registry=registry)
        for code in ErrorCode:
            self._errors.labels(str(code))
        self._rate_limited = Counter("liveloop_rate_limited",
                                     "Events refused with rate-limited.", ["event"],
                                     registry=registry)
        for event in RATE_LIMITED_EVENTS:
            self._rate_limited.labels(event)
        self._overflow = Counter("liveloop_overflow_closes",
                                 "Sessions closed because a buffer of theirs was full.",
                                 ["buffer"], registry=registry)
        for buffer in OVERFLOW_REASONS.values():
            self._overflow.labels(buffer)
        self._refused = Counter("liveloop_refused",
                                "Connections or requests refused by a protective limit.",
                                ["limit"], registry=registry)
        for limit in REFUSAL_LIMITS:
            self._refused.labels(limit)
        self._time_to_match = Histogram(
            "liveloop_time_to_match_seconds",
            "From joining the queue to being matched.", buckets=TIME_TO_MATCH_BUCKETS,
            registry=registry)
        self.away = Gauge("liveloop_away_sockets",
                          "Sockets whose client is away (waiting to recover).",
                          registry=registry)
        """Up when a socket goes away, down when its away time ends (any way)."""
        self.recoveries = Counter("liveloop_recoveries",
                                  "Away sockets that recovered or did not.", ["outcome"],
                                  registry=registry)
        """``succeeded`` (the client came back, here or on another node) or ``failed``
        (the window passed, the recovery was given up, or a shutdown ended it)."""
        for outcome in ("succeeded", "failed"):
            self.recoveries.labels(outcome)

    def watch(self, snapshot: Callable[[], Snapshot]) -> None:
        """Report the queue and room counts from ``snapshot`` (the matchmaker's), once."""
        if self.enabled and self._snapshot is None:
            self._snapshot = _SnapshotCollector(snapshot)
            self.registry.register(self._snapshot)

    # -- counting (each call costs a lock and an add; nothing here awaits) -----------

    def session_opened(self, transport: str) -> None:
        """A new Engine.IO session (a handshake) on ``transport``."""
        self.handshakes.inc()
        self.connections[transport].inc()

    def upgraded(self) -> None:
        """A polling session moved to WebSocket."""
        self.connections["polling"].dec()
        self.connections["websocket"].inc()

    def session_ended(self, transport: str, reason: str) -> None:
        """A session on ``transport`` closed with ``reason`` (a server-chosen string)."""
        self.connections[transport].dec()
        self._disconnects.labels(reason).inc()
        buffer = OVERFLOW_REASONS.get(reason)
        if buffer is not None:
            self.overflow_close(buffer)

    def overflow_close(self, buffer: str) -> None:
        """A session was closed because its ``buffer`` was full. Closes whose reason is in
        :data:`OVERFLOW_REASONS` are counted by :meth:`session_ended` already."""
        self._overflow.labels(buffer).inc()

    def refused(self, limit: str) -> None:
        """A connection, handshake or request was refused by ``limit`` (one of
        :data:`REFUSAL_LIMITS`, or another fixed name: never a client-chosen string)."""
        self._refused.labels(limit).inc()

    def error(self, code: ErrorCode, event: str) -> None:
        """A client was answered ``code`` for ``event`` (an event name the server knows)."""
        self._errors.labels(str(code)).inc()
        if code is ErrorCode.RATE_LIMITED:
            self._rate_limited.labels(event).inc()

    def matched(self, waited: float) -> None:
        """Someone was matched after waiting ``waited`` seconds in the queue."""
        self._time_to_match.observe(waited)


def _relayed_children(child: Callable[[str], Increment]
                      ) -> dict[type[events.Relayed], Increment]:
    kinds = (events.CallOffer, events.CallAnswer, events.SendIceCandidates,
             events.NewMessage)
    names = {cls: name for name, cls in events.INBOUND.items()}
    return {kind: child(names[kind]) for kind in kinds}


def metrics_asgi(registry: CollectorRegistry) -> Callable[..., Any]:
    """An ASGI app that answers every HTTP request with the registry's metrics in the
    Prometheus text format (by ``prometheus_client``), and completes the lifespan."""
    exposition = make_asgi_app(registry)

    async def app(scope: dict[str, Any], receive: Callable[..., Any],
                  send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].replace("lifespan.", "")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        elif scope["type"] == "http":
            await exposition(scope, receive, send)

    return app


async def serve_metrics(metrics: Metrics, bind: str, *,
                        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Serve ``metrics`` over HTTP on ``bind`` (``HOST:PORT``) until cancelled; reports
    the bound URLs through ``task_status``. Hypercorn serves it, with our log handlers."""
    import logging

    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("liveloop.metrics")
    config.graceful_timeout = 0.5
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(
            partial(serve, metrics_asgi(metrics.registry), config))
        metrics.urls = urls
        task_status.started(urls)
