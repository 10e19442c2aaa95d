"""A Live Loop app whose Trio side crashes on request, for the entry tests: ``GET /crash``
makes one of its actors raise, as a bug in an actor would (``tests/test_guest.py``)."""

from __future__ import annotations

import trio

from liveloop.app import RootApp
from liveloop.server.asgi import Receive, Scope, Send, respond

_crash = trio.Event()


class ActorCrashed(Exception):
    """What the actor raises."""


async def _actor(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await _crash.wait()
    raise ActorCrashed("the actor crashed on request")


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] == "/crash":
        _crash.set()
    await respond(send, 200, b"ok", [])


app = RootApp({}, _http, (_actor,))
