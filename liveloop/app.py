"""The ASGI application, and ``app`` for ``hypercorn liveloop.app:app`` and the like.

:class:`RootApp` routes each Engine.IO path to its :class:`EngineServer` and everything
else to a Quart-Trio app (``GET /``, ``GET /api/status``). Its actors (the Engine.IO
servers' session nurseries and the Live Loop service) run in :meth:`RootApp.run`:

- under ``liveloop serve`` the command's own nursery runs them beside hypercorn, so an
  actor that crashes ends the process;
- under ``hypercorn -k trio`` the ASGI lifespan runs them, and a crash is logged at
  CRITICAL with its traceback and ends the worker process at once with status 1, rather
  than leaving a server that answers but no longer matches anyone;
- under an asyncio server (``hypercorn liveloop.app:app``, ``hypercorn -k uvloop``,
  ``uvicorn liveloop.app:app``) the lifespan starts them, and the whole Trio side, as
  a guest run on the server's loop, and every other ASGI call crosses to it through
  :class:`~liveloop.guest.GuestRun` (see :mod:`liveloop.guest`); a crash there is
  logged at CRITICAL and ends the process with status 1 as well (the server itself
  would go on serving); under hypercorn's single spawned worker its parent, which would
  exit 0, is ended too (:mod:`liveloop.hostexit`).

Under any other async library the lifespan startup fails with :data:`WRONG_HOST`; a WSGI
server (``gunicorn liveloop.app:app`` with its sync worker, ``wsgiref``) gets a 500 whose
body, and a CRITICAL log line, is :data:`WSGI_HOST` (see :class:`HostedApp`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import sniffio
import trio

from .config import Settings
from .guest import GuestRun
from .hostexit import exit_now, fail_host
from .logs import configure_under_host
from .metrics import Metrics, serve_metrics
from .server import EngineServer, socketio_server
from .server.api import DisconnectReason
from .server.asgi import ASGIApp, Message, Receive, Scope, Send, refuse_websocket, respond
from .server.cors import OriginPolicy
from .server.session import DISCONNECT_GRACE

log = logging.getLogger(__name__)

COMMANDS = ("`liveloop serve`, `hypercorn liveloop.app:app`, "
            "`hypercorn -k trio liveloop.app:app` or `uvicorn liveloop.app:app`")
"""The commands that serve Live Loop, for the messages to a user who tried another."""
WRONG_HOST = (
    "Live Loop runs on Trio, natively or as a guest on an asyncio loop, but this server "
    "runs {library}. Start it with " + COMMANDS + "."
)
WSGI_HOST = (
    "Live Loop is an ASGI application (Socket.IO needs WebSockets and long-lived "
    "requests), but this server called it as a WSGI application, which cannot serve it. "
    "Start it with " + COMMANDS + "."
)
NO_LIFESPAN = (
    "Live Loop starts its Trio side in the ASGI lifespan, which this server did not "
    "run; start it with the lifespan on (uvicorn: `--lifespan on`)."
)

Actor = Callable[..., Awaitable[None]]


class RootApp:
    """Engine.IO endpoints by path, a fallback HTTP app, and the actors they need."""

    def __init__(self, engines: Mapping[str, EngineServer], http: ASGIApp | None,
                 actors: tuple[Actor, ...] = (), metrics: Metrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else Metrics(enabled=False)
        """What this app counts into (served by an actor if LIVELOOP_METRICS_BIND)."""
        self._engines = {path.rstrip("/"): engine for path, engine in engines.items()}
        self._http = http
        self._actors = (*actors, *(engine.run for engine in engines.values()))
        self._running = False
        self._guest: GuestRun | None = None
        self._host_checked = False
        self._draining = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run every actor until cancelled; an actor's crash propagates."""
        async with trio.open_nursery() as nursery:
            for actor in self._actors:
                await nursery.start(actor)
            self._running = True
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._running = False

    async def drain(self, calls_for: float) -> None:
        """Drain (``liveloop serve``'s first SIGTERM): ``GET /readyz`` answers 503 and no
        new session is taken from now on; sessions that need not stay close at once, the
        others as they finish, or at ``calls_for`` seconds. Returns when none is left."""
        self._draining = True
        engines = tuple(self._engines.values())
        for engine in engines:
            engine.drain()
        with trio.move_on_after(calls_for):
            for engine in engines:
                await engine.drained()
        for engine in engines:
            engine.close_all(DisconnectReason.SERVER_SHUTDOWN)
        with trio.move_on_after(DISCONNECT_GRACE):  # their last writes, their partners told
            for engine in engines:
                await engine.drained()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guest = self._guest
        if guest is not None and scope["type"] != "lifespan":
            await guest.call(scope, receive, send)
            return
        if not self._host_checked and scope["type"] != "lifespan":
            if sniffio.current_async_library() != "trio":
                log.critical(NO_LIFESPAN)
                raise RuntimeError(NO_LIFESPAN)
            self._host_checked = True
        await self.route(scope, receive, send)

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI call, in Trio (the guest's bridge comes here too)."""
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind == "http" and scope.get("path") == "/readyz":
            # For a balancer's health check: 503 once draining, so it sends no one new.
            ready = not self._draining
            await respond(send, 200 if ready else 503, b"ready" if ready else b"draining", [])
            return
        engine = self._engines.get(scope.get("path", "").rstrip("/"))
        if engine is not None:
            await engine(scope, receive, send)
        elif self._http is not None and kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await refuse_websocket(send, 1008)
        else:
            await respond(send, 404, b"Not Found", [])

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        library = sniffio.current_async_library()
        if library == "asyncio":
            await self._lifespan_as_guest(receive, send)
            return
        if library != "trio":
            wrong = WRONG_HOST.format(library=library)
            log.critical(wrong)
            fail_host()
            await send({"type": "lifespan.startup.failed", "message": wrong})
            return
        if self._running:  # ``liveloop serve`` runs the actors itself
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        from .server import hypercorn_eof

        hypercorn_eof.patch()  # hypercorn serves every connection here: see that module
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.run)
                await send({"type": "lifespan.startup.complete"})
                await receive()
                nursery.cancel_scope.cancel()
        except Exception:
            log.critical("Live Loop stopped: a task crashed", exc_info=True)
            self._exit(1)
            raise
        await send({"type": "lifespan.shutdown.complete"})

    async def _lifespan_as_guest(self, receive: Receive, send: Send) -> None:
        """The lifespan under an asyncio server: the Trio side as a guest run."""
        # A crash ends the process with status 1, as under ``-k trio`` (docs/operations.md)
        guest = GuestRun(self.run, self.route, on_crash=lambda: self._exit(1))
        try:
            await guest.start()
        except Exception as exc:
            log.critical("Live Loop failed to start", exc_info=True)
            fail_host()
            await send({"type": "lifespan.startup.failed", "message": repr(exc)})
            return
        self._guest = guest
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await guest.stop()
        except Exception as exc:  # it crashed earlier, and the process is stopping
            await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})

    @staticmethod
    def _exit(status: int) -> None:
        """End the process now with ``status``, the crash being logged (and hypercorn's
        parent process, which would exit 0: :mod:`liveloop.hostexit`). Raising instead
        would have hypercorn's worker print the exception group again, raw, on stderr."""
        exit_now(status)


def rest_app(settings: Settings,
             status: Callable[[], Awaitable[dict[str, Any]]]) -> ASGIApp:
    """The Quart-Trio app for the seed's REST endpoints."""
    from quart import request
    from quart_trio import QuartTrio

    rest = QuartTrio("liveloop")
    origins = OriginPolicy(settings.allowed_origins)

    @rest.get("/")
    async def health() -> dict[str, str]:
        return {"status": "OK", "message": "Hello, TypeScript!"}

    @rest.get("/api/status")
    async def api_status() -> dict[str, Any]:
        return await status()

    @rest.after_request
    async def cors(response: Any) -> Any:
        for name, value in origins.headers(dict(request.scope)):
            response.headers[name.decode()] = value.decode("latin-1")
        return response

    return _sent_from_here(rest)  # type: ignore[arg-type]


def _sent_from_here(app: ASGIApp) -> ASGIApp:
    """``app`` (Quart-Trio's), its messages sent from this request's own task.

    Quart-Trio sends its response from a task that it cancels right after; hypercorn
    restarts its keep-alive timer in the task that sends the response's end, so the timer
    was cancelled with it and an idle kept-alive connection (or one sending a second head
    slowly) was never closed. Relayed from here, the timer lives.
    """

    async def relayed(scope: Scope, receive: Receive, send: Send) -> None:
        into, out_of = trio.open_memory_channel[Message](1)

        async def run() -> None:
            async with into:
                await app(scope, receive, into.send)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            async with out_of:
                async for message in out_of:
                    await send(message)

    return relayed


def create_app(settings: Settings) -> RootApp:
    """Live Loop itself: the service's namespace at ``settings.path``, plus REST and the
    web client at ``/app/``."""
    from .server.static import StaticMount, web_files
    from .service import LiveLoop

    metrics = Metrics(enabled=bool(settings.metrics_bind))
    service = LiveLoop(settings, metrics)
    engine = socketio_server(settings, {"/": service.namespace}, metrics,
                             service.recovery_store())
    actors: tuple[Actor, ...] = (service.run,)
    if settings.metrics_bind:
        actors += (partial(serve_metrics, metrics, settings.metrics_bind),)
    http = StaticMount("/app", web_files(), rest_app(settings, service.fetch_status))
    return RootApp({settings.path: engine}, http, actors, metrics)


class HostedApp:
    """What a server loads as ``liveloop.app:app``: ``asgi`` for an ASGI server, and for
    a WSGI server a 500 naming :data:`COMMANDS` (logged at CRITICAL once), rather than
    Python's TypeError from a call with two arguments instead of three.

    Servers tell ASGI 3 from WSGI (or ASGI 2) by whether the object, or its
    ``__call__`` attribute, is a coroutine function: hypercorn's ``is_asgi`` and
    uvicorn's ``interface="auto"`` both read ``app.__call__``. That attribute is
    ``asgi`` itself, set on the instance, so both see an ASGI 3 app on every Python
    version (no ``inspect.markcoroutinefunction``, which only 3.12 has). Calling the
    object, though, runs the class's ``__call__`` (Python looks special methods up on
    the type, never the instance), which can answer a synchronous WSGI call."""

    def __init__(self, asgi: ASGIApp) -> None:
        self.asgi = asgi
        self._told = False
        # what servers inspect (see the class docstring); the call itself ignores it
        object.__setattr__(self, "__call__", asgi)

    def __call__(self, *args: Any) -> Any:
        """``(scope, receive, send)``: the ASGI app's coroutine. ``(environ,
        start_response)``: a WSGI answer, 500 with :data:`WSGI_HOST`."""
        if len(args) == 2 and isinstance(args[0], dict) and callable(args[1]):
            return self._wsgi(args[1])
        return self.asgi(*args)

    def _wsgi(self, start_response: Callable[..., object]) -> list[bytes]:
        if not self._told:
            self._told = True
            log.critical(WSGI_HOST)
        body = (WSGI_HOST + "\n").encode()
        start_response("500 Internal Server Error", [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body)))])
        return [body]


def lazy_app(factory: Callable[[Settings], RootApp]) -> ASGIApp:
    """An ASGI app that builds ``factory(Settings.from_env())`` on its first call, so
    that importing it (as a server does) reads nothing; bad settings fail the start."""
    instance: RootApp | None = None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal instance
        if instance is None:
            try:
                settings = Settings.from_env()
                configure_under_host(settings)
                instance = factory(settings)
            except Exception as exc:  # bad LIVELOOP_* values: say so, and fail the start
                log.critical("Live Loop cannot start: %s", exc)
                if scope["type"] != "lifespan":
                    raise
                fail_host()
                await receive()
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
        await instance(scope, receive, send)

    return app


app = HostedApp(lazy_app(create_app))
"""What ``hypercorn liveloop.app:app`` (any worker) and ``uvicorn liveloop.app:app``
serve; settings from ``LIVELOOP_*``. A WSGI server gets a 500 naming those commands."""
