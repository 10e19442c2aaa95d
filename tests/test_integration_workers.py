"""The end-to-end tests of :mod:`tests.test_integration_liveloop`, every one of them,
against a deployment of ``liveloop serve --workers 2`` sharing a real Redis: the same
clients (official npm client, default transports and WebSocket-only; python-socketio,
WebSocket-only and polling-only), the same expectations.

Only the ``live`` and ``live_unlimited`` fixtures differ: each test gets its own Redis
server and its own two-worker Live Loop, both real processes on free loopback ports;
and the official client also runs in polling-only mode.
Handshakes take turns over the workers (:mod:`liveloop.server.routing`), so a test's
sockets land on both, and most pairs are made, relayed and ended across the two.

One difference is made explicit rather than assumed. In one process, a request's ack
comes after the matchmaker has it in its mailbox, and that mailbox's order is the
queue's; across workers, each worker's requests reach Redis on their own, so acks given
by two workers do not order their requests in the shared queue (first come is first to
reach Redis). ``pair(a, b)`` says "a waited longer": here it waits until the shared
queue (``/api/status``, read from Redis) holds nobody but a before b asks, and holds
nobody else before a asks (someone who just left may still be on the way out).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from . import test_integration_liveloop as suite
from .cluster import running_redis
from .conftest import VARIANTS, Sock, Variant
from .nodeclient import NodeClient
from .processes import liveloop_process
from .test_integration_liveloop import *  # noqa: F403  (the tests themselves)
from .test_integration_liveloop import IMAGE, OK, Live, call, receive, request


@pytest.mark.xfail(strict=False, reason=(
    "across workers, a's stop-call is acked before it reaches the shared queue, so b may "
    "still be paired with a and then told stop-by-remote-user; i11-redis's ack order"))
async def test_rate_limits_with_default_settings(live: Live) -> None:
    """The suite's test, known to fail now and then across workers (see the mark)."""
    await suite.test_rate_limits_with_default_settings(live)


@pytest.fixture(params=[*VARIANTS, pytest.param(Variant("node", ("polling",)),
                                                 id="node-polling")])
def variant(request: pytest.FixtureRequest) -> Variant:
    """The suite's client kinds, and the official client in polling-only mode: every
    one of its requests must reach its session's worker."""
    value: Variant = request.param
    return value


@pytest.fixture(autouse=True)
def pair_in_queue_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pair`` as the suite's, with its order made by the shared queue (see above)."""

    async def pair(a: Sock, b: Sock, a_name: str = "Ann", b_name: str = "Bob",
                   a_image: str = IMAGE, b_image: str = ""
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
        live = _live[0]
        first = a_name.strip()
        await live.status_until(lambda s: set(s["queue"]["users"]) <= {first})
        assert await call(a, "request-room", request(a_name, a_image)) == OK
        await live.status_until(lambda s: s["queue"]["users"] == [first])
        assert await call(b, "request-room", request(b_name, b_image)) == OK
        return await receive(a, "match-done"), await receive(b, "match-done")

    monkeypatch.setattr(suite, "pair", pair)


_live: list[Live] = []
"""The running test's deployment, for ``pair``."""


async def _deployment(nursery: trio.Nursery, driver: NodeClient, variant: Variant,
                      **settings: Any) -> AsyncIterator[Live]:
    async with running_redis(nursery) as redis:
        env = {"LIVELOOP_REDIS_URL": redis.url,
               **{f"LIVELOOP_{name.upper()}": str(value) for name, value in settings.items()}}
        try:
            async with liveloop_process("serve", "--workers", "2", env=env) as running:
                _live[:] = [Live(running.url, driver, variant)]
                yield _live[0]
        finally:
            _live.clear()


@pytest.fixture
async def live(nursery: trio.Nursery, driver: NodeClient, variant: Variant
               ) -> AsyncIterator[Live]:
    async for deployed in _deployment(nursery, driver, variant):
        yield deployed


@pytest.fixture
async def live_unlimited(nursery: trio.Nursery, driver: NodeClient, variant: Variant
                         ) -> AsyncIterator[Live]:
    async for deployed in _deployment(nursery, driver, variant, rate_limits="off"):
        yield deployed
