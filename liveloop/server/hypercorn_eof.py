"""Repairs of hypercorn's Trio connection for ``hypercorn -k trio liveloop.app:app``.

hypercorn's ``TCPServer`` sends under its ``send_lock`` but ends the connection
(``_close``: ``send_eof``, then ``aclose``) outside it, from whichever task finished the
exchange. On a malformed chunked body or pipelined garbage, the reader task writes the
400 while the application's task ends the connection, and Trio's stream refuses the
second sender with ``BusyResourceError``. Under ``liveloop serve`` the front door's
hand-off stream prevents it (:class:`~.frontdoor._Replay`); under ``hypercorn -k trio``
the stream is hypercorn's own, and the error escapes into hypercorn's listener nursery
and ends the worker process: one request in about fifteen of that kind stops the server.

:func:`patch` replaces ``TCPServer._close`` with one that sends the EOF under the send
lock, or, when a write holds the lock, skips it: the ``aclose`` that follows ends that
write (``ClosedResourceError``, which hypercorn's sender catches); cancelled (the
worker's shutdown), it skips the EOF and still closes. It also wraps
``TCPServer.run``: any other error that escapes one connection (the fuzz test found
h11's ``LocalProtocolError`` escaping on WebSocket upgrades followed by garbage) ends
that connection alone, with one line at INFO, instead of the worker. Both rely on the
private interfaces of the hypercorn versions :mod:`.frontdoor` is pinned to.

Why the race is guarded twice: :func:`patch` is applied only when hypercorn hosts the
app (``RootApp``'s lifespan under ``hypercorn -k trio``), where hypercorn makes each
connection's stream and a patch of its class is the only way in. Under ``liveloop
serve`` the front door makes the stream it hands hypercorn (:class:`~.frontdoor._Replay`,
which it needs anyway to replay the request head), so the guard lives in that stream and
hypercorn's classes stay unpatched; a connection's failure there is logged by the front
door, with :func:`contained` as here.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import trio

from ..logs import clip

log = logging.getLogger(__name__)

_PATCHED = "_liveloop_eof_under_lock"


def contained(exc: Exception) -> None:
    """Log hypercorn's own failure on one client's bytes, which ended that connection
    alone: at INFO, as a client's protocol error is (the client caused it; the server
    goes on). Used here and by the front door, which hands connections to hypercorn."""
    log.info("connection ended by a hypercorn error", extra={"error": clip(repr(exc), 200)})


def patch() -> None:
    """Make hypercorn's Trio ``TCPServer`` end connections without colliding with a
    write, and contain a connection's failure to it; idempotent."""
    from hypercorn.trio.tcp_server import TCPServer

    if getattr(TCPServer._close, _PATCHED, False):
        return

    async def _close(self: Any) -> None:
        # aclose in a finally: cancelled (the worker's shutdown cancels every connection,
        # whose run() closes in its finally), taking the lock or send_eof raises Cancelled,
        # and the stream stayed open until trio's serve_listeners closed it. Trio's aclose
        # closes even when cancelled (forcefully), so every path closes here. (hypercorn's
        # own _close skips a TCP stream's aclose that way too: send_eof checkpoints first.)
        try:
            if not self.send_lock.locked():
                async with self.send_lock:
                    # AttributeError: a TLS stream has no EOF (as hypercorn's own _close).
                    with contextlib.suppress(trio.BrokenResourceError,
                                             trio.ClosedResourceError,
                                             trio.BusyResourceError, AttributeError):
                        await self.stream.send_eof()
        finally:
            await self.stream.aclose()

    run = TCPServer.run

    async def _run(self: Any) -> None:
        try:
            await run(self)
        except Exception as exc:
            contained(exc)

    setattr(_close, _PATCHED, True)
    TCPServer._close = _close  # type: ignore[method-assign]
    TCPServer.run = _run  # type: ignore[method-assign]
