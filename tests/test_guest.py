"""The asyncio <-> Trio bridge (:mod:`liveloop.guest`) on its own, on asyncio's loop and
on uvloop's: each test is a plain function that runs an asyncio host with
:func:`asyncio.Runner`, which starts a :class:`GuestRun` and makes ASGI calls to it, with
``receive`` / ``send`` the test controls. Every wait is on an event or a future.

After each scenario the host checks that nothing is left running on its loop but its
own task (``assert_only_me``), and the Trio side reports what it saw through
:class:`Record`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import sniffio
import trio

from liveloop.app import RootApp
from liveloop.guest import GuestRun
from liveloop.server.asgi import Message, Receive, Scope, Send, read_body, respond

LOOPS = [pytest.param(None, id="asyncio")]
if importlib.util.find_spec("uvloop") is not None:
    import uvloop

    LOOPS.append(pytest.param(uvloop.new_event_loop, id="uvloop"))

HTTP: Scope = {"type": "http", "method": "POST", "path": "/", "headers": []}


@pytest.fixture(params=LOOPS)
def host(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    """Run a scenario as the main task of an asyncio host (asyncio's loop, or uvloop's)."""
    factory = request.param

    def run(scenario: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(scenario)

    return run


def assert_only_me() -> None:
    assert asyncio.all_tasks() == {asyncio.current_task()}


class Record:
    """What the Trio side saw, set from Trio; the host waits on ``events``."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}
        self.log: list[str] = []

    def mark(self, what: str) -> None:
        """From Trio: note ``what`` and wake a host waiting for it (same thread)."""
        assert sniffio.current_async_library() == "trio"
        self.log.append(what)
        self.event(what).set()

    def event(self, what: str) -> asyncio.Event:
        return self.events.setdefault(what, asyncio.Event())

    async def wait(self, what: str) -> None:
        await asyncio.wait_for(self.event(what).wait(), 10)


async def idle_actors(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                      ) -> None:
    task_status.started()
    await trio.sleep_forever()


class HostSide:
    """An ASGI server's side of one call: ``incoming`` feeds ``receive``; what the app
    sends lands in ``sent``; ``receiving`` tells when the app waits on ``receive``."""

    def __init__(self, *incoming: Message) -> None:
        self.incoming: asyncio.Queue[Message] = asyncio.Queue()
        for message in incoming:
            self.incoming.put_nowait(message)
        self.sent: list[Message] = []
        self.receiving = asyncio.Event()
        self.receive_cancelled = asyncio.Event()

    async def receive(self) -> Message:
        assert sniffio.current_async_library() == "asyncio"
        self.receiving.set()
        try:
            return await self.incoming.get()
        except asyncio.CancelledError:
            self.receive_cancelled.set()
            raise

    async def send(self, message: Message) -> None:
        assert sniffio.current_async_library() == "asyncio"
        await asyncio.sleep(0)  # a real server's send may suspend
        self.sent.append(message)


async def started(app: Callable[[Scope, Receive, Send], Awaitable[None]],
                  **kwargs: Any) -> GuestRun:
    guest = GuestRun(idle_actors, app, **kwargs)
    await guest.start()
    return guest


def test_messages_cross_both_ways(host: Callable[..., None]) -> None:
    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive, 1000)
        assert body is not None
        await respond(send, 200, body.upper(), [])

    async def scenario() -> None:
        guest = await started(echo)
        side = HostSide({"type": "http.request", "body": b"ab", "more_body": True},
                        {"type": "http.request", "body": b"cd"})
        await guest.call(HTTP, side.receive, side.send)
        assert side.sent[0]["status"] == 200 and side.sent[1]["body"] == b"ABCD"
        assert_only_me()
        await guest.stop()
        assert_only_me()

    host(scenario())


def test_an_app_error_reaches_the_host_and_the_guest_goes_on(host: Callable[..., None]
                                                              ) -> None:
    calls = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a bug in one request")
        await respond(send, 200, b"fine", [])

    async def scenario() -> None:
        guest = await started(app)
        with pytest.raises(ValueError, match="a bug in one request"):
            await guest.call(HTTP, HostSide().receive, HostSide().send)
        side = HostSide()
        await guest.call(HTTP, side.receive, side.send)
        assert side.sent[1]["body"] == b"fine"
        await guest.stop()
        assert_only_me()

    host(scenario())


def test_trio_cancels_a_pending_receive(host: Callable[..., None]) -> None:
    """The Trio side gives up on ``receive``: the host's receive is cancelled, and the
    app goes on to answer."""
    record = Record()

    async def impatient(scope: Scope, receive: Receive, send: Send) -> None:
        with trio.CancelScope() as waiting:
            record.mark("waiting")
            scope["give_up"] = waiting  # the host cancels this from Trio, below
            await receive()
        assert waiting.cancelled_caught
        record.mark("gave up")
        await respond(send, 200, b"gave up", [])

    async def scenario() -> None:
        guest = await started(impatient)
        side = HostSide()
        scope = dict(HTTP)
        call = asyncio.create_task(guest.call(scope, side.receive, side.send))
        await side.receiving.wait()
        give_up: trio.CancelScope = scope["give_up"]
        guest._token.run_sync_soon(give_up.cancel)  # type: ignore[union-attr]
        await call
        assert side.receive_cancelled.is_set()
        assert record.log == ["waiting", "gave up"] and side.sent[1]["body"] == b"gave up"
        await guest.stop()
        assert_only_me()

    host(scenario())


def test_a_message_that_arrives_as_trio_cancels_is_not_lost(host: Callable[..., None]
                                                            ) -> None:
    """The message arrives in the same host tick as the Trio side's cancellation: either
    ``receive`` returns it (Trio lets an operation complete instead of cancelling) and the
    cancellation comes at the next checkpoint, or the host's receive is cancelled and the
    message stays in the host's queue. Never both, never neither."""
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        with trio.CancelScope() as scope_:
            scope["scope"] = scope_
            record.mark("waiting")
            message = await receive()
            record.mark(f"got {message['body']!r}")
            await trio.lowlevel.checkpoint()
            record.mark("not cancelled")
        record.mark("cancelled next")

    async def scenario() -> None:
        guest = await started(app)
        side = HostSide()
        scope = dict(HTTP)
        call = asyncio.create_task(guest.call(scope, side.receive, side.send))
        await side.receiving.wait()
        # Same host tick: the message arrives and the Trio side is told to cancel.
        side.incoming.put_nowait({"type": "http.request", "body": b"late"})
        guest._token.run_sync_soon(scope["scope"].cancel)  # type: ignore[union-attr]
        await call
        assert "cancelled next" in record.log and "not cancelled" not in record.log
        got = record.log.count("got b'late'")
        assert got + side.incoming.qsize() == 1
        assert side.receive_cancelled.is_set() == (got == 0)
        await guest.stop()
        assert_only_me()

    host(scenario())


def test_host_cancels_the_call(host: Callable[..., None]) -> None:
    """The host cancels its task: the Trio side is cancelled (its cleanup runs, and may
    still use ``send``), and the host's task ends only after it has."""
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            record.mark("started")
            await receive()
        finally:
            record.mark("cleanup")
            with trio.CancelScope(shield=True):
                await send({"type": "http.response.start", "status": 500, "headers": []})
            record.mark("cleaned up")

    async def scenario() -> None:
        guest = await started(app)
        side = HostSide()
        call = asyncio.create_task(guest.call(HTTP, side.receive, side.send))
        await record.wait("started")
        await side.receiving.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert record.log == ["started", "cleanup", "cleaned up"]
        assert side.receive_cancelled.is_set() and side.sent[0]["status"] == 500
        assert_only_me()
        await guest.stop()

    host(scenario())


def test_host_cancels_again_while_trio_cleans_up(host: Callable[..., None]) -> None:
    record = Record()
    release = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            record.mark("started")
            await trio.sleep_forever()
        finally:
            record.mark("cleanup")
            with trio.CancelScope(shield=True):
                await release.wait()
            record.mark("cleaned up")

    async def scenario() -> None:
        guest = await started(app)
        call = asyncio.create_task(guest.call(HTTP, HostSide().receive, HostSide().send))
        await record.wait("started")
        call.cancel()
        await record.wait("cleanup")
        call.cancel()  # again: the host's task still waits for the Trio side
        await asyncio.sleep(0)
        assert not call.done()
        guest._token.run_sync_soon(release.set)  # type: ignore[union-attr]
        with pytest.raises(asyncio.CancelledError):
            await call
        assert record.log[-1] == "cleaned up"
        await guest.stop()
        assert_only_me()

    host(scenario())


def test_a_client_that_vanishes_mid_request(host: Callable[..., None]) -> None:
    """The body stops with ``http.disconnect``, and the host's send then fails: the app
    sees both, as under any ASGI server, and the call ends cleanly."""
    record = Record()

    class Gone(OSError):
        pass

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive, 1000)
        record.mark(f"body {body!r}")
        try:
            await respond(send, 200, b"too late", [])
        except Gone:
            record.mark("send failed")

    async def scenario() -> None:
        guest = await started(app)
        side = HostSide({"type": "http.request", "body": b"half", "more_body": True},
                        {"type": "http.disconnect"})

        async def send(message: Message) -> None:
            raise Gone("the client has gone")

        await guest.call(HTTP, side.receive, send)
        assert record.log == ["body None", "send failed"]
        await guest.stop()
        assert_only_me()

    host(scenario())


def test_shutdown_with_calls_open(host: Callable[..., None]) -> None:
    """Stopping the guest with calls waiting on the host (a long poll, a WebSocket):
    every call ends, every host task ends, and later calls get 503."""
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            record.mark("open")
            await receive()
        except trio.Cancelled:
            record.mark("cancelled")
            raise

    async def scenario() -> None:
        guest = await started(app)
        sides = [HostSide() for _ in range(3)]
        calls = [asyncio.create_task(guest.call(HTTP, s.receive, s.send)) for s in sides]
        for side in sides:
            await side.receiving.wait()
        await guest.stop()
        await asyncio.gather(*calls)
        assert record.log.count("cancelled") == 3
        assert all(side.receive_cancelled.is_set() for side in sides)
        assert_only_me()
        late = HostSide()
        await guest.call(HTTP, late.receive, late.send)
        assert late.sent[0]["status"] == 503
        ws = HostSide()
        await guest.call({"type": "websocket", "path": "/"}, ws.receive, ws.send)
        assert ws.sent == [{"type": "websocket.close", "code": 1011}]

    host(scenario())


def test_a_crash_is_critical_and_stops_the_process(host: Callable[..., None],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    crash = trio.Event()
    stopped: list[str] = []

    async def crashing(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                       ) -> None:
        task_status.started()
        await crash.wait()
        raise RuntimeError("an actor broke")

    async def open_call(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    async def scenario() -> None:
        guest = GuestRun(crashing, open_call, on_crash=lambda: stopped.append("stop"))
        await guest.start()
        side = HostSide()
        call = asyncio.create_task(guest.call(HTTP, side.receive, side.send))
        await side.receiving.wait()
        guest._token.run_sync_soon(crash.set)  # type: ignore[union-attr]
        await call  # the open call ends with the Trio side
        with pytest.raises(ExceptionGroup) as raised:
            await guest.stop()
        assert stopped == ["stop"] and not guest.serving
        late = HostSide()
        await guest.call(HTTP, late.receive, late.send)
        assert late.sent[0]["status"] == 503
        assert raised.group_contains(RuntimeError, match="an actor broke")
        assert_only_me()

    with caplog.at_level(logging.CRITICAL, logger="liveloop.guest"):
        host(scenario())
    assert [r.levelno for r in caplog.records] == [logging.CRITICAL]


def test_a_failed_start_raises(host: Callable[..., None]) -> None:
    async def broken(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                     ) -> None:
        raise OSError("cannot start")

    async def scenario() -> None:
        guest = GuestRun(broken, respond_ok, on_crash=pytest.fail)
        with pytest.raises(ExceptionGroup) as raised:
            await guest.start()
        assert raised.group_contains(OSError, match="cannot start")
        assert_only_me()

    host(scenario())


async def respond_ok(scope: Scope, receive: Receive, send: Send) -> None:
    await respond(send, 200, b"ok", [])


# -- RootApp's lifespan under an asyncio host ------------------------------------------


async def lifespan(app: RootApp, *then: Callable[[], Awaitable[None]]) -> list[str]:
    """Drive ``app``'s lifespan like a server: startup, ``then``, shutdown."""
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    answers: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.create_task(app({"type": "lifespan"}, to_app.get, answers.put))
    to_app.put_nowait({"type": "lifespan.startup"})
    seen = [(await answers.get())["type"]]
    if seen == ["lifespan.startup.complete"]:
        for step in then:
            await step()
        to_app.put_nowait({"type": "lifespan.shutdown"})
        seen.append((await answers.get())["type"])
    await task
    return seen


def test_root_app_serves_as_a_guest(host: Callable[..., None]) -> None:
    app = RootApp({}, respond_ok, (idle_actors,))

    async def request() -> None:
        side = HostSide()
        await app(HTTP, side.receive, side.send)
        assert side.sent[1]["body"] == b"ok"

    async def scenario() -> None:
        assert await lifespan(app, request) == [
            "lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert_only_me()

    host(scenario())


def test_another_async_library_is_refused_at_start(host: Callable[..., None]) -> None:
    app = RootApp({}, respond_ok, (idle_actors,))

    async def scenario() -> None:
        token = sniffio.current_async_library_cvar.set("curio")
        try:
            assert await lifespan(app) == ["lifespan.startup.failed"]
        finally:
            sniffio.current_async_library_cvar.reset(token)

    host(scenario())


def test_without_a_lifespan_calls_say_what_is_missing(host: Callable[..., None]) -> None:
    """``uvicorn --lifespan off``: no Trio side was started; each call says so."""
    app = RootApp({}, respond_ok, (idle_actors,))

    async def scenario() -> None:
        side = HostSide()
        with pytest.raises(RuntimeError, match="lifespan"):
            await app(HTTP, side.receive, side.send)
        assert side.sent == []

    host(scenario())
