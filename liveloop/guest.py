"""Trio as a guest on an asyncio ASGI server's loop, and the bridge for each ASGI call.

Under ``hypercorn liveloop.app:app`` (its default asyncio worker, or ``-k uvloop``) and
``uvicorn liveloop.app:app`` the host's loop is asyncio. :class:`GuestRun` starts the
whole Trio side on that loop with :func:`trio.lowlevel.start_guest_run` (Trio's "guest
mode"): one Trio run, in the same thread, whose tasks the host's loop steps, and whose
only thread waits for Trio's own I/O and timers. Nothing else of Live Loop learns that
it runs as a guest.

Each ASGI call the host makes is carried across by :meth:`GuestRun.call`, in the same
thread, without threads of its own:

- the call's Trio side is a task in the guest's nursery that runs the Trio app with a
  ``receive`` and a ``send`` of its own;
- each of those runs the host's ``receive`` / ``send`` as an asyncio task of the call
  (an :class:`asyncio.TaskGroup`), and the Trio task sleeps until that task is done
  (:func:`trio.lowlevel.wait_task_rescheduled`; the host wakes it through the run's
  :class:`trio.lowlevel.TrioToken`, which any callback may use);
- cancellation crosses both ways: a Trio task cancelled while the host works for it
  cancels the host's task and waits for it to end (a value that still arrives is
  returned, as Trio allows); a host that cancels the call cancels the call's Trio
  side, and the host's task waits, whatever else it is told, until that side has
  ended. Disconnects are ASGI messages, and cross like any other;
- when :meth:`GuestRun.call` returns (or raises), nothing of the call runs on either
  side: the Trio side has returned, and it only returns once each host task it started
  is done.

A crash of the Trio side after startup is logged at CRITICAL and then ``on_crash``
runs, which by default sends the process SIGTERM (``liveloop.app`` passes one that
exits at once with status 1): hypercorn's asyncio worker and uvicorn go on serving
after an exception that comes after startup, and a server that answers but matches
nobody is worse than one that stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import outcome
import trio

from .server.asgi import ASGIApp, Message, Receive, Scope, Send, refuse_websocket, respond

log = logging.getLogger(__name__)

Actors = Callable[..., Awaitable[None]]
"""Runs until cancelled; reports readiness through ``task_status`` (``nursery.start``)."""


class NotServing(Exception):
    """The Trio side is not running (not yet started, stopped or crashed)."""


class CallOver(RuntimeError):
    """A Trio task used ``receive`` or ``send`` of an ASGI call that has ended."""


def stop_process() -> None:
    """What a crash of the Trio side does by default: ask the host to shut down."""
    os.kill(os.getpid(), signal.SIGTERM)


class GuestRun:
    """The Trio side of an app (``actors`` and the ASGI ``app`` they serve), as a guest
    on the running asyncio loop; :meth:`start` and :meth:`stop` from the lifespan,
    :meth:`call` for every other ASGI call. All methods are asyncio coroutines."""

    def __init__(self, actors: Actors, app: ASGIApp,
                 on_crash: Callable[[], None] = stop_process) -> None:
        self._actors = actors
        self._app = app
        self._on_crash = on_crash
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stopping: trio.Event | None = None
        self._stop_requested = False
        self._started: asyncio.Future[None] | None = None
        self._done: asyncio.Future[outcome.Outcome[None]] | None = None
        self._calls: set[_Call] = set()

    @property
    def serving(self) -> bool:
        """Whether calls are served now (started, and neither stopping nor ended)."""
        return (self._token is not None and not self._stop_requested
                and self._done is not None and not self._done.done())

    async def start(self) -> None:
        """Start the guest run on this loop; returns once the actors have started.
        Raises what the Trio side raised if it ended before that."""
        loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        self._done = loop.create_future()
        trio.lowlevel.start_guest_run(
            self._main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=loop.call_soon,
            done_callback=self._ended,
            # asyncio's own signal handling (add_signal_handler) owns the wakeup fd
            host_uses_signal_set_wakeup_fd=True,
        )
        await asyncio.wait((self._started, self._done), return_when=asyncio.FIRST_COMPLETED)
        if not self._started.done():
            self._done.result().unwrap()
            raise NotServing("the Trio side ended while starting")

    async def stop(self) -> None:
        """End the Trio side (calls still open are cancelled) and wait until it has.
        Raises what it crashed with, if it did."""
        if self._done is None:
            return
        if not self._done.done() and self._token is not None and self._stopping is not None:
            self._stop_requested = True
            stopping = self._stopping
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(stopping.set)
        result = await asyncio.shield(self._done)
        result.unwrap()

    async def _main(self) -> None:
        self._stopping = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(self._actors)
            self._token = trio.lowlevel.current_trio_token()
            self._nursery = nursery
            assert self._started is not None
            self._started.set_result(None)
            await self._stopping.wait()
            nursery.cancel_scope.cancel()

    def _ended(self, result: outcome.Outcome[None]) -> None:
        """The guest run is over (called on the host's loop)."""
        self._nursery = None
        for call in list(self._calls):  # calls that the Trio side never picked up
            call.finish(outcome.Error(NotServing("the Trio side has ended")))
        assert self._done is not None and self._started is not None
        self._done.set_result(result)
        if isinstance(result, outcome.Error) and self._started.done():
            log.critical("the Trio side crashed; stopping the server",
                         exc_info=result.error)
            self._on_crash()

    # -- the bridge ---------------------------------------------------------------------

    async def call(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI call by the Trio app; see the module docstring. If the Trio
        side is not serving, an HTTP request gets 503 and a WebSocket is refused."""
        token = self._token
        if not self.serving or token is None:
            await _unavailable(scope, send)
            return
        done: asyncio.Future[outcome.Outcome[None]] = asyncio.get_running_loop().create_future()
        async with asyncio.TaskGroup() as host_tasks:
            call = _Call(token, host_tasks, receive, send, done)
            self._calls.add(call)
            try:
                token.run_sync_soon(self._spawn, call, scope)
                await _wait(done, on_cancel=call.cancel_from_host)
            except trio.RunFinishedError:
                call.finish(outcome.Error(NotServing("the Trio side has ended")))
            finally:
                self._calls.discard(call)
        try:
            done.result().unwrap()
        except NotServing:
            if not call.used:
                await _unavailable(scope, send)

    def _spawn(self, call: _Call, scope: Scope) -> None:
        """In Trio: start the call's Trio side, unless the guest is past serving."""
        if self._nursery is None or self._stop_requested or call.finished:
            call.finish(outcome.Error(NotServing("the Trio side is stopping")))
            return
        self._nursery.start_soon(call.run, self._app, scope)


async def _wait(done: asyncio.Future[Any], on_cancel: Callable[[], None]) -> None:
    """Wait for ``done``. If this task is cancelled, call ``on_cancel`` once, go on
    waiting for ``done`` through any further cancellation, then re-raise."""
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        on_cancel()
        while not done.done():
            try:
                await asyncio.shield(done)
            except asyncio.CancelledError:
                continue
        raise


async def _unavailable(scope: Scope, send: Send) -> None:
    if scope["type"] == "http":
        await respond(send, 503, b"Service Unavailable", [])
    elif scope["type"] == "websocket":
        await refuse_websocket(send, 1011)


async def _capture(op: Callable[[], Awaitable[Any]]) -> outcome.Outcome[Any]:
    """Run one host operation, keeping whatever it raised (cancellation included) for
    the Trio task that waits on it, so the host's task group never sees it."""
    try:
        return outcome.Value(await op())
    except BaseException as exc:  # handed to the Trio side, which raises it
        return outcome.Error(exc)


class _Call:
    """One ASGI call across the two loops. ``finish`` is called once, on the host's
    loop (from a Trio task, or from the guest's end), and ``done`` tells the host."""

    def __init__(self, token: trio.lowlevel.TrioToken, host_tasks: asyncio.TaskGroup,
                 receive: Receive, send: Send, done: asyncio.Future[outcome.Outcome[None]]
                 ) -> None:
        self._token = token
        self._host_tasks = host_tasks
        self._host_receive = receive
        self._host_send = send
        self._done = done
        self._context = contextvars.copy_context()  # the host's, for the host's tasks
        self._scope = trio.CancelScope()
        self.used = False  # whether the app sent or received anything

    @property
    def finished(self) -> bool:
        return self._done.done()

    def finish(self, result: outcome.Outcome[None]) -> None:
        if not self._done.done():
            self._done.set_result(result)

    def cancel_from_host(self) -> None:
        """The host cancelled the call: cancel its Trio side (on Trio's next tick)."""
        try:
            self._token.run_sync_soon(self._scope.cancel)
        except trio.RunFinishedError:
            self.finish(outcome.Value(None))

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        """The call's Trio side: the app, with this call's ``receive`` and ``send``."""
        result: outcome.Outcome[None] = outcome.Value(None)
        try:
            with self._scope:
                await app(scope, self.receive, self.send)
        except Exception as exc:  # the host logs it as the app's error
            result = outcome.Error(exc)
        finally:  # cancelled by the guest's end too: the host must hear of it
            self.finish(result)

    async def receive(self) -> Message:
        message: Message = await self._host(self._host_receive)
        return message

    async def send(self, message: Message) -> None:
        await self._host(lambda: self._host_send(message))

    async def _host(self, op: Callable[[], Awaitable[Any]]) -> Any:
        """In Trio: run ``op`` as a host task of this call, and sleep until it is done."""
        if self._done.done():
            raise CallOver("this ASGI call is over")
        self.used = True
        task = trio.lowlevel.current_task()
        token = self._token
        host_task = self._host_tasks.create_task(_capture(op), context=self._context)
        host_task.add_done_callback(
            lambda _: token.run_sync_soon(trio.lowlevel.reschedule, task))
        raise_cancel: Callable[[], NoReturn] | None = None

        def abort(cancel: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
            nonlocal raise_cancel
            raise_cancel = cancel
            host_task.cancel()
            return trio.lowlevel.Abort.FAILED  # woken once the host task has ended

        await trio.lowlevel.wait_task_rescheduled(abort)
        result: outcome.Outcome[Any] = (
            outcome.Error(asyncio.CancelledError()) if host_task.cancelled()
            else host_task.result())
        if isinstance(result, outcome.Error) and isinstance(result.error,
                                                            asyncio.CancelledError):
            if raise_cancel is not None:
                raise_cancel()
            raise CallOver("the host cancelled this ASGI call's operation")
        return result.unwrap()
