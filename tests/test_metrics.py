"""Prometheus metrics: counted by the real server, served on their own listener, in
agreement with ``/api/status``; and the counting API the limits use."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from liveloop.app import RootApp, create_app
from liveloop.config import Settings
from liveloop.errors import ErrorCode
from liveloop.metrics import REFUSAL_LIMITS, Metrics

from .conftest import DEADLINE, Sock, http_get, start_server
from .nodeclient import NodeClient

OFFER = {"type": "offer", "sdp": "v=0\r\ns=-\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\ns=-\r\n"}
CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host",
             "sdpMid": "0", "sdpMLineIndex": 0}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


async def scrape(app: RootApp) -> Samples:
    with trio.fail_after(DEADLINE):
        response = await http_get(app.metrics.urls[0], "/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.body.decode())


async def status(url: str) -> dict[str, Any]:
    with trio.fail_after(DEADLINE):
        document: dict[str, Any] = (await http_get(url, "/api/status")).json()
    return document


def agree(found: Samples, document: dict[str, Any]) -> None:
    """The metrics /api/status also shows have its values."""
    assert value(found, "liveloop_queue_size") == document["queue"]["size"]
    assert value(found, "liveloop_rooms_active") == document["rooms"]["active"]
    assert value(found, "liveloop_matches_total") == document["rooms"]["total"]


@pytest.fixture
async def served(nursery: trio.Nursery) -> AsyncIterator[tuple[RootApp, str]]:
    settings = Settings(bind="127.0.0.1:0", metrics_bind="127.0.0.1:0")
    app = create_app(settings)
    url = await start_server(nursery, app, settings)
    yield app, url


async def test_metrics_count_a_session_of_real_clients_and_agree_with_status(
        served: tuple[RootApp, str]) -> None:
    app, url = served
    assert app.metrics.urls and app.metrics.urls[0] != url
    before = await scrape(app)
    agree(before, await status(url))
    assert value(before, "liveloop_handshakes_total") == 0
    assert value(before, "process_cpu_seconds_total") > 0  # the library's process metrics

    async with NodeClient("node") as driver:
        a, b, c = (Sock(driver, name) for name in "abc")
        with trio.fail_after(DEADLINE):
            for sock in (a, b, c):
                await sock.connect(url)  # default transports: polling, then upgrade
                await sock.wait("connect")
            assert (await a.call("request-room", {"name": "Ann"}))["ok"]
            assert (await b.call("request-room", {"name": "Bob"}))["ok"]
            await a.receive("match-done")
            await b.receive("match-done")
            assert (await c.call("request-room", {"name": "Cat"}))["ok"]
            # Relays, each awaited at the receiver (so counted by then).
            assert (await a.call("negotiation-call-offer", {"offer": OFFER}))["ok"]
            await b.receive("negotiation-call-offer")
            assert (await b.call("negotiation-call-answer", {"ans": ANSWER}))["ok"]
            await a.receive("negotiation-call-answer")
            for _ in range(2):
                assert (await a.call("send-new-ice-candidates", {"candidate": CANDIDATE}))[
                    "ok"]
                await b.receive("new-ice-candidates")
            assert (await a.call("newMessage", {"message": "hi"}))["ok"]
            await b.receive("Message:recived")
            # Errors: a bad payload, a relay from outside a call, a rate limit.
            assert not (await c.call("negotiation-call-offer", {"offer": 5}))["ok"]
            assert not (await c.call("newMessage", {"message": "x"}))["ok"]
            assert not (await a.call("request-room", {"name": "Ann"}))["ok"]  # Next < 5 s

        with trio.fail_after(DEADLINE):
            while True:  # every client upgrades to WebSocket soon after connecting
                during = await scrape(app)
                if value(during, "liveloop_connections", transport="websocket") == 3:
                    break
                await trio.sleep(0.01)
        assert value(during, "liveloop_connections", transport="polling") == 0
        agree(during, await status(url))
        assert value(during, "liveloop_queue_size") == 1
        assert value(during, "liveloop_rooms_active") == 1
        assert value(during, "liveloop_handshakes_total") == 3
        assert sum(value(during, "liveloop_connections", transport=t)
                   for t in ("polling", "websocket")) == 3
        for event, count in (("negotiation-call-offer", 1), ("negotiation-call-answer", 1),
                             ("send-new-ice-candidates", 2), ("newMessage", 1)):
            assert value(during, "liveloop_relayed_total", event=event) == count, event
        assert value(during, "liveloop_errors_total", code="invalid-payload") == 1
        assert value(during, "liveloop_errors_total", code="not-in-room") == 1
        assert value(during, "liveloop_errors_total", code="rate-limited") == 1
        assert value(during, "liveloop_rate_limited_total", event="request-room") == 1
        assert value(during, "liveloop_time_to_match_seconds_count") == 2

        # a leaves: b is re-queued and meets c.
        with trio.fail_after(DEADLINE):
            await driver.disconnect(socket="a")
            await b.receive("match-done")
            await c.receive("match-done")
    with trio.fail_after(DEADLINE):
        while True:  # the driver has closed every socket; the server notices in time
            after = await scrape(app)
            if value(after, "liveloop_handshakes_total") == 3 and sum(
                    value(after, "liveloop_connections", transport=t)
                    for t in ("polling", "websocket")) == 0:
                break
            await trio.sleep(0.01)
    agree(after, await status(url))
    assert value(after, "liveloop_matches_total") == 2
    assert value(after, "liveloop_time_to_match_seconds_count") == 4
    closes = {labels: v for (name, labels), v in after.items()
              if name == "liveloop_disconnects_total"}
    assert sum(closes.values()) == 3, closes


async def test_metrics_are_not_on_the_public_port(served: tuple[RootApp, str]) -> None:
    _, url = served
    with trio.fail_after(DEADLINE):
        assert (await http_get(url, "/metrics")).status == 404


async def test_no_metrics_listener_by_default(nursery: trio.Nursery) -> None:
    settings = Settings(bind="127.0.0.1:0")
    app = create_app(settings)
    await start_server(nursery, app, settings)
    assert not app.metrics.enabled and app.metrics.urls == []
    assert list(app.metrics.registry.collect()) == []


def read(metrics: Metrics) -> Samples:
    from prometheus_client import generate_latest

    return samples(generate_latest(metrics.registry).decode())


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(process=False), Metrics(process=False)
    first.session_opened("polling")
    assert value(read(first), "liveloop_handshakes_total") == 1
    assert value(read(second), "liveloop_handshakes_total") == 0


def test_overflow_closes_and_refusals_are_counted_by_label() -> None:
    metrics = Metrics(process=False)
    for limit in REFUSAL_LIMITS:
        assert value(read(metrics), "liveloop_refused_total", limit=limit) == 0
    metrics.session_opened("websocket")
    metrics.session_ended("websocket", "outbox overflow")
    metrics.overflow_close("outbox")  # e.g. a byte bound that closes with its own reason
    metrics.refused("handshakes_per_ip")
    metrics.refused("handshakes_per_ip")
    metrics.error(ErrorCode.RATE_LIMITED, "negotiation-call-offer")
    found = read(metrics)
    assert value(found, "liveloop_overflow_closes_total", buffer="outbox") == 2
    assert value(found, "liveloop_overflow_closes_total", buffer="mailbox") == 0
    assert value(found, "liveloop_disconnects_total", reason="outbox overflow") == 1
    assert value(found, "liveloop_connections", transport="websocket") == 0
    assert value(found, "liveloop_refused_total", limit="handshakes_per_ip") == 2
    assert value(found, "liveloop_rate_limited_total", event="negotiation-call-offer") == 1


def test_disabled_metrics_count_nothing() -> None:
    metrics = Metrics(enabled=False)
    metrics.session_opened("polling")
    metrics.upgraded()
    metrics.session_ended("websocket", "outbox overflow")
    metrics.refused("sessions")
    metrics.error(ErrorCode.QUEUE_FULL, "request-room")
    metrics.matched(1.0)
    for counter in metrics.relayed.values():
        counter.inc()
    metrics.watch(lambda: None)  # type: ignore[arg-type,return-value]
    assert list(metrics.registry.collect()) == []


async def test_metrics_listener_under_hypercorn() -> None:
    """The listener is an actor of the app, so ``hypercorn -k trio`` serves it too."""
    env = {**os.environ, "LIVELOOP_LOG_FORMAT": "json",
           "LIVELOOP_METRICS_BIND": "127.0.0.1:0"}
    process = await trio.lowlevel.open_process(
        [str(Path(sys.executable).parent / "hypercorn"), "-k", "trio", "--bind",
         "127.0.0.1:0", "liveloop.app:app"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert process.stderr is not None
    seen = b""
    try:
        with trio.fail_after(60):
            # Hypercorn's own line, in its format; the metrics listener's, in ours.
            while (found := re.search(rb'"liveloop\.metrics".*(http://127\.0\.0\.1:\d+)',
                                      seen)) is None:
                seen += await process.stderr.receive_some(65536)
            response = await http_get(found.group(1).decode(), "/metrics")
    finally:
        process.terminate()
        await process.wait()
    found_samples = samples(response.body.decode())
    assert value(found_samples, "liveloop_queue_size") == 0
    assert value(found_samples, "liveloop_handshakes_total") == 0
