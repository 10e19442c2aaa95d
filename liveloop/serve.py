"""Serving a :class:`~liveloop.app.RootApp` in-process: Engine.IO WebSockets by our own
transport (:mod:`liveloop.server.wstransport`) behind our front door
(:mod:`liveloop.server.frontdoor`), everything else by hypercorn's Trio worker."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from functools import partial

import trio
from hypercorn.config import Config

from .app import RootApp
from .config import Settings
from .server import frontdoor
from .server.routing import Worker

log = logging.getLogger(__name__)


def hypercorn_config(settings: Settings) -> Config:
    """Hypercorn's config for these settings: the bind address, and a WebSocket message
    limit at maxPayload so oversize frames are refused before they are buffered whole
    (for a WebSocket that hypercorn serves: one on a kept-alive HTTP connection)."""
    config = Config()
    config.bind = [settings.bind]
    config.websocket_max_message_size = settings.max_payload
    config.accesslog = None
    # Hypercorn's own lines go through the root logger, formatted as Live Loop's are.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2.0
    config.keep_alive_timeout = settings.header_timeout  # the front door's too
    if bool(settings.certfile) != bool(settings.keyfile):
        raise ValueError("certfile and keyfile go together: give both or neither")
    if settings.certfile:
        config.certfile = settings.certfile
        config.keyfile = settings.keyfile
        # HTTP/1.1 only: the front door reads request heads with h11 (and browsers'
        # WebSockets use it anyway).
        config.alpn_protocols = ["http/1.1"]
    return config


async def serve(app: RootApp, settings: Settings, *, worker: Worker | None = None,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the app's actors and the listener in one nursery until cancelled.

    As one of several workers (``worker``, from :mod:`liveloop.workers`): listen on the
    worker's socket, tag sids with its index, route each request to its session's
    worker, and stop as well when the parent process is gone.

    Reports the bound URLs (``http://127.0.0.1:PORT``, ``https://`` with a certificate)
    through ``task_status``. If an
    actor crashes, the nursery cancels the listener and the exception propagates.
    """
    async with trio.open_nursery() as nursery:
        engines = app._engines  # RootApp's own routing: Engine.IO path -> server
        if worker is not None:
            for engine in engines.values():
                engine.worker = worker.handoff.index
            nursery.start_soon(_stop_without_parent, worker.lifeline, nursery.cancel_scope)
        await nursery.start(app.run)
        binds: list[str] = await nursery.start(
            partial(frontdoor.serve, app, engines, hypercorn_config(settings), settings,
                    metrics=app.metrics, worker=worker)
        )
        log.info("Live Loop listening on %s", ", ".join(binds))
        if app.metrics.urls:
            log.info("metrics of %s on %s",
                     "this process" if worker is None else f"worker {worker.handoff.index}",
                     ", ".join(app.metrics.urls))
        task_status.started(binds)
        nursery.start_soon(_drain_on_signal, app, settings.drain_timeout,
                           nursery.cancel_scope)


async def _stop_without_parent(lifeline: int, scope: trio.CancelScope) -> None:
    """The parent of the workers is gone (even by SIGKILL): stop serving."""
    await trio.lowlevel.wait_readable(lifeline)
    log.warning("the parent process is gone: shutting down")
    scope.cancel()


async def _drain_on_signal(app: RootApp, calls_for: float, scope: trio.CancelScope) -> None:
    """The first SIGTERM or SIGINT drains (:meth:`RootApp.drain`, at most ``calls_for``
    seconds for the calls), then stops serving; a second one stops serving at once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal %d: draining (calls may go on for %g s; signal again to stop"
                     " now)", signum, calls_for)
            break
        async with trio.open_nursery() as draining:
            draining.start_soon(_stop_on_second, signals, scope)
            await app.drain(calls_for)
            log.info("drained: stopping")
            draining.cancel_scope.cancel()
        scope.cancel()


async def _stop_on_second(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for signum in signals:
        log.info("signal %d again: stopping now", signum)
        scope.cancel()
        return
