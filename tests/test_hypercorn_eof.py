"""The repairs of hypercorn's Trio connection (``hypercorn -k trio``): how the patched
``TCPServer._close`` ends a connection, cancelled or not. The worker-level test (a real
hypercorn under malformed bodies) is in test_entrypoints."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from trio.testing import MockClock

from liveloop.server import hypercorn_eof


@pytest.fixture(autouse=True)
def patched(monkeypatch: pytest.MonkeyPatch) -> None:
    """The patch for this test only: hypercorn's own methods come back after it."""
    monkeypatch.setattr(TCPServer, "_close", TCPServer._close)
    monkeypatch.setattr(TCPServer, "run", TCPServer.run)
    hypercorn_eof.patch()


class Stream:
    """Records what the close does to it; ``tls``: no ``send_eof``, as trio.SSLStream."""

    def __init__(self, tls: bool) -> None:
        self.calls: list[str] = []
        if not tls:
            self.send_eof = self._send_eof

    async def _send_eof(self) -> None:
        await trio.lowlevel.checkpoint()  # as trio.SocketStream's, before the shutdown
        self.calls.append("eof")

    async def aclose(self) -> None:
        self.calls.append("aclose")  # closed first, then the checkpoint, as trio's
        await trio.lowlevel.checkpoint()


async def app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("no request is sent")


def server(stream: object) -> TCPServer:
    return TCPServer(ASGIWrapper(app), Config(), WorkerContext(None), {},
                     stream)  # type: ignore[arg-type]


async def hold(lock: trio.Lock, release: trio.Event) -> None:
    async with lock:  # as a write in progress
        await release.wait()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("writing", [False, True], ids=["idle", "writing"])
async def test_a_cancelled_close_still_closes_the_stream(tls: bool, writing: bool) -> None:
    """The worker's shutdown cancels every connection, which closes in a cancelled
    scope: taking the send lock (or send_eof) raised Cancelled before the aclose."""
    stream = Stream(tls)
    connection = server(stream)
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        if writing:
            nursery.start_soon(hold, connection.send_lock, release)
            await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            await connection._close()
        release.set()
    assert scope.cancelled_caught
    assert stream.calls == ["aclose"]  # no EOF: a forceful close


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_a_close_sends_the_eof_under_the_lock_then_closes(tls: bool) -> None:
    stream = Stream(tls)
    await server(stream)._close()
    assert stream.calls == (["aclose"] if tls else ["eof", "aclose"])


async def test_a_close_during_a_write_closes_without_the_eof() -> None:
    """The aclose ends the write (ClosedResourceError, which hypercorn's sender
    catches); waiting for the lock would wait for a write that may never end."""
    stream = Stream(tls=False)
    connection = server(stream)
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, connection.send_lock, release)
        await trio.testing.wait_all_tasks_blocked()
        await connection._close()
        assert stream.calls == ["aclose"]
        release.set()


async def test_a_cancelled_connection_closes_its_socket(mock_clock: MockClock) -> None:
    """hypercorn's run, cancelled while it waits for a request (its clock stopped, so
    no timeout ends it first), closes the socket itself."""
    ours, theirs = trio.socket.socketpair()
    with theirs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server(trio.SocketStream(ours)).run)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert ours.fileno() < 0
