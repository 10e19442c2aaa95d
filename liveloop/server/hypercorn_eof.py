"""A repair of hypercorn's Trio connection for ``hypercorn -k trio liveloop.app:app``.

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
write (``ClosedResourceError``, which hypercorn's sender catches). It relies on the
private interfaces of the hypercorn versions :mod:`.frontdoor` is pinned to.
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio

_PATCHED = "_liveloop_eof_under_lock"


def patch() -> None:
    """Make hypercorn's Trio ``TCPServer`` end connections without colliding with a
    write; idempotent."""
    from hypercorn.trio.tcp_server import TCPServer

    if getattr(TCPServer._close, _PATCHED, False):
        return

    async def _close(self: Any) -> None:
        if not self.send_lock.locked():
            async with self.send_lock:
                # AttributeError: a TLS stream has no EOF (as hypercorn's own _close).
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                         trio.BusyResourceError, AttributeError):
                    await self.stream.send_eof()
        await self.stream.aclose()

    setattr(_close, _PATCHED, True)
    TCPServer._close = _close  # type: ignore[method-assign]
