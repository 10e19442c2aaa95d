"""The end-to-end tests of :mod:`tests.test_integration_liveloop`, every one of them,
against a deployment of ``liveloop serve --workers 2`` sharing a real Redis: the same
clients (official npm client, default transports and WebSocket-only; python-socketio,
WebSocket-only and polling-only), the same expectations.

Only the ``live`` and ``live_unlimited`` fixtures differ: each test gets its own Redis
server and its own two-worker Live Loop, both real processes on free loopback ports;
and the official client also runs in polling-only mode.
Handshakes take turns over the workers (:mod:`liveloop.server.routing`), so a test's
sockets land on both, and most pairs are made, relayed and ended across the two.

An ack means the same here as in one process: the change is done for every worker
(with Redis, the worker acks once the script has run; docs/events.md), so the suite's
own ``pair`` ("a waited longer": a asks, has its ack, then b asks) holds across workers
unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from .cluster import running_redis
from .conftest import VARIANTS, Variant
from .nodeclient import NodeClient
from .processes import liveloop_process
from .test_integration_liveloop import *  # noqa: F403  (the tests themselves)
from .test_integration_liveloop import Live


@pytest.fixture(params=[*VARIANTS, pytest.param(Variant("node", ("polling",)),
                                                 id="node-polling")])
def variant(request: pytest.FixtureRequest) -> Variant:
    """The suite's client kinds, and the official client in polling-only mode: every
    one of its requests must reach its session's worker."""
    value: Variant = request.param
    return value


async def _deployment(nursery: trio.Nursery, driver: NodeClient, variant: Variant,
                      **settings: Any) -> AsyncIterator[Live]:
    async with running_redis(nursery) as redis:
        env = {"LIVELOOP_REDIS_URL": redis.url,
               **{f"LIVELOOP_{name.upper()}": str(value) for name, value in settings.items()}}
        async with liveloop_process("serve", "--workers", "2", env=env) as running:
            yield Live(running.url, driver, variant)


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
