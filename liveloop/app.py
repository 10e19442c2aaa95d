"""The ASGI application, and ``app`` for ``hypercorn -k trio liveloop.app:app``.

:class:`RootApp` routes each Engine.IO path to its :class:`EngineServer` and everything
else to a Quart-Trio app (``GET /``, ``GET /api/status``). Its actors (the Engine.IO
servers' session nurseries and the Live Loop service) run in :meth:`RootApp.run`:

- under ``liveloop serve`` the command's own nursery runs them beside hypercorn, so an
  actor that crashes ends the process;
- under ``hypercorn -k trio`` the ASGI lifespan runs them, and a crash is logged at
  CRITICAL with its traceback and ends the worker process at once with status 1, rather
  than leaving a server that answers but no longer matches anyone.

Under hypercorn's default asyncio worker the lifespan startup fails with a message that
names ``-k trio``: a Trio app cannot serve there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import sniffio
import trio

from .config import Settings
from .logs import configure_under_host
from .metrics import Metrics, serve_metrics
from .server import EngineServer, socketio_server
from .server.api import DisconnectReason
from .server.asgi import ASGIApp, Message, Receive, Scope, Send, respond
from .server.cors import OriginPolicy
from .server.session import DISCONNECT_GRACE

log = logging.getLogger(__name__)

WRONG_WORKER = (
    "Live Loop runs on Trio, but hypercorn started an asyncio worker. "
    "Start it with `hypercorn -k trio liveloop.app:app`, or with `liveloop serve`."
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
            await send({"type": "websocket.close", "code": 1008})
        else:
            await respond(send, 404, b"Not Found", [])

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        if sniffio.current_async_library() != "trio":
            log.critical(WRONG_WORKER)
            await send({"type": "lifespan.startup.failed", "message": WRONG_WORKER})
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

    @staticmethod
    def _exit(status: int) -> None:
        """End the process now with ``status``, the crash being logged. Raising instead
        would have hypercorn's worker print the exception group again, raw, on stderr,
        and hypercorn 0.18's parent exit 0 all the same (docs/operations.md)."""
        logging.shutdown()
        os._exit(status)


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
    engine = socketio_server(settings, {"/": service.namespace}, metrics)
    actors: tuple[Actor, ...] = (service.run,)
    if settings.metrics_bind:
        actors += (partial(serve_metrics, metrics, settings.metrics_bind),)
    http = StaticMount("/app", web_files(), rest_app(settings, service.fetch_status))
    return RootApp({settings.path: engine}, http, actors, metrics)


def _lazy_app() -> ASGIApp:
    instance: RootApp | None = None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal instance
        if instance is None:
            settings = Settings.from_env()
            configure_under_host(settings)
            instance = create_app(settings)
        await instance(scope, receive, send)

    return app


app = _lazy_app()
"""What ``hypercorn -k trio liveloop.app:app`` serves; settings from ``LIVELOOP_*``."""
