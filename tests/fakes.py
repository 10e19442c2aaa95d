"""A network-free stand-in for the Socket.IO layer, for testing the Live Loop domain.

:class:`FakeSocket` implements :class:`liveloop.server.api.Socket`: it records emits and
queues posts. :class:`FakeClient` plays the server layer's connection task: it feeds the
handler's ``on_event`` / ``on_message`` / ``on_disconnect`` one at a time, in arrival
order, and calls nothing after ``on_disconnect``, as the real layer promises.
:class:`World` runs a :class:`~liveloop.service.LiveLoop` with such clients.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import attrs
import trio
import trio.testing

from liveloop.config import Settings
from liveloop.matchmaker import Matchmaker
from liveloop.peer import Peer
from liveloop.server.api import JSON, SocketClosed
from liveloop.service import LiveLoop


@attrs.frozen
class _Event:
    event: str
    args: list[JSON]
    ack: AckRecorder | None


@attrs.frozen
class _Message:
    message: object


@attrs.frozen
class _Disconnect:
    reason: str


_Item = _Event | _Message | _Disconnect


class AckRecorder:
    """An :class:`~liveloop.server.api.Ack` that remembers its (single) call."""

    def __init__(self) -> None:
        self.calls: list[tuple[JSON, ...]] = []

    def __call__(self, *args: JSON) -> None:
        self.calls.append(args)

    @property
    def value(self) -> Any:
        """The ack's one argument; fails unless the ack was sent exactly once."""
        assert len(self.calls) == 1, self.calls
        assert len(self.calls[0]) == 1, self.calls
        return self.calls[0][0]


class FakeSocket:
    """A :class:`~liveloop.server.api.Socket` that records what is emitted to it."""

    def __init__(self, sid: str) -> None:
        self._sid = sid
        self._connected = True
        self.emitted: list[tuple[str, list[JSON]]] = []
        self.items: trio.MemorySendChannel[_Item]
        self.items, self.receive = trio.open_memory_channel[_Item](math.inf)

    @property
    def sid(self) -> str:
        return self._sid

    @property
    def namespace(self) -> str:
        return "/"

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def present(self) -> bool:
        return self._connected

    def emit(self, event: str, *args: JSON) -> None:
        if self._connected:
            self.emitted.append((event, list(args)))

    def emit_json(self, data: str) -> None:
        event, *args = json.loads(data)
        self.emit(event, *args)

    def post(self, message: object) -> None:
        if self._connected:
            self.items.send_nowait(_Message(message))

    async def call(self, event: str, *args: JSON) -> list[JSON]:
        raise SocketClosed

    def disconnect(self) -> None:
        self.close("server namespace disconnect")

    def drop(self) -> None:
        self.close("server shutting down")

    def close(self, reason: str) -> None:
        """The transport is gone: nothing more is emitted; ``on_disconnect`` follows the
        items already queued."""
        if self._connected:
            self._connected = False
            self.items.send_nowait(_Disconnect(reason))


class FakeClient:
    """One connected client: its socket, its handler, and the connection task's loop."""

    def __init__(self, socket: FakeSocket, handler: Peer) -> None:
        self.socket = socket
        self.handler = handler
        self.gone = False

    @property
    def sid(self) -> str:
        return self.socket.sid

    async def serve(self) -> None:
        """The connection task: every handler call in order, nothing after disconnect."""
        async for item in self.socket.receive:
            if isinstance(item, _Event):
                await self.handler.on_event(item.event, item.args, item.ack)
            elif isinstance(item, _Message):
                await self.handler.on_message(item.message)
            else:
                await self.handler.on_disconnect(item.reason)
                self.gone = True
                return

    def emit(self, event: str, *args: JSON, ack: bool = True) -> AckRecorder | None:
        """Send a client event (with an ack request unless ``ack=False``)."""
        recorder = AckRecorder() if ack else None
        if self.socket.connected:
            self.socket.items.send_nowait(_Event(event, list(args), recorder))
        return recorder

    def disconnect(self) -> None:
        self.socket.close("transport close")

    # -- what the client saw -------------------------------------------------------------

    def names(self) -> list[str]:
        return [event for event, _ in self.socket.emitted]

    def received(self, event: str) -> list[Any]:
        """The first argument of each ``event`` received (None for no argument)."""
        return [args[0] if args else None for name, args in self.socket.emitted
                if name == event]

    def errors(self) -> list[dict[str, Any]]:
        return self.received("error-message")

    def clear(self) -> None:
        self.socket.emitted.clear()


class World:
    """A running LiveLoop with fake clients, all in one nursery."""

    def __init__(self, nursery: trio.Nursery, settings: Settings) -> None:
        self.nursery = nursery
        self.settings = settings
        self.service = LiveLoop(settings)
        self._ids = itertools.count(1)

    @property
    def matchmaker(self) -> Matchmaker:
        """The service's matchmaker, the one-process kind (no Redis here), for the
        tests that look inside it."""
        matchmaker = self.service.matchmaker
        assert isinstance(matchmaker, Matchmaker)
        return matchmaker

    async def start(self) -> World:
        await self.nursery.start(self.service.run)
        return self

    async def client(self) -> FakeClient:
        socket = FakeSocket(f"sid{next(self._ids)}")
        handler = await self.service.namespace.connect(socket, None)
        client = FakeClient(socket, handler)
        self.nursery.start_soon(client.serve)
        return client

    async def settle(self) -> None:
        """Wait until every task is blocked: all messages so far have been handled."""
        await trio.testing.wait_all_tasks_blocked()

    async def ask(self, client: FakeClient, event: str, *args: JSON) -> Any:
        """Emit with an ack request, let everything settle, return the ack's argument."""
        recorder = client.emit(event, *args)
        await self.settle()
        assert recorder is not None
        return recorder.value

    async def join(self, client: FakeClient, name: str = "Ann", image: str = "") -> Any:
        return await self.ask(client, "request-room",
                              {"name": name, "roomId": None, "userImage": image})

    async def pair(self, name_a: str = "Ann", name_b: str = "Bob"
                   ) -> tuple[FakeClient, FakeClient, str]:
        """Two new clients, paired; returns them (``a`` the initiator) and the room id."""
        a = await self.client()
        b = await self.client()
        assert await self.join(a, name_a) == {"ok": True}
        assert await self.join(b, name_b) == {"ok": True}
        (done,) = a.received("match-done")
        return a, b, done["roomId"]


async def open_world(nursery: trio.Nursery, **overrides: Any) -> World:
    """A started :class:`World` with default settings changed by ``overrides``."""
    return await World(nursery, Settings(**overrides)).start()
