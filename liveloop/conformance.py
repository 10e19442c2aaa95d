"""The app that the official protocol test suites expect at ``localhost:3000``.

- ``/engine.io/``: a raw Engine.IO server that echoes every message back.
- ``/socket.io/``: a Socket.IO server whose ``/`` and ``/custom`` namespaces emit
  ``auth`` with the CONNECT payload on connection; ``/`` answers ``message`` with
  ``message-back`` (same arguments) and acks ``message-with-ack`` with its arguments.

Settings as the suites' READMEs give them: pingInterval 300 ms, pingTimeout 200 ms,
maxPayload 1,000,000, any origin. Started by ``liveloop conformance``, or by an ASGI
server as ``liveloop.conformance:app`` (``hypercorn liveloop.conformance:app``).
"""

from __future__ import annotations

from collections.abc import Sequence

from .app import RootApp, lazy_app
from .config import Settings
from .server import EngineServer, socketio_server
from .server.api import DRAIN, JSON, Ack, DisconnectReason, Socket, SocketHandler
from .server.session import EngineSession


class EchoApp:
    """A raw Engine.IO session app: every message goes back as it came."""

    _session: EngineSession

    async def on_open(self, session: EngineSession) -> None:
        self._session = session

    async def on_messages(self, batch: Sequence[str | bytes]) -> None:
        self._session.send_packets(["4" + d if isinstance(d, str) else d for d in batch])

    async def on_post(self, message: object) -> None:
        if message is DRAIN:
            self._session.close(DisconnectReason.SERVER_SHUTDOWN)

    async def on_close(self, reason: str) -> None:
        pass


class _Handler:
    def __init__(self, socket: Socket, echo: bool) -> None:
        self._socket = socket
        self._echo = echo

    async def on_event(self, event: str, args: list[JSON], ack: Ack | None) -> None:
        if not self._echo:
            return
        if event == "message":
            self._socket.emit("message-back", *args)
        elif event == "message-with-ack" and ack is not None:
            ack(*args)

    async def on_message(self, message: object) -> None:
        if message is DRAIN:
            self._socket.drop()

    async def on_recover(self) -> None:
        pass

    async def on_disconnect(self, reason: str) -> None:
        pass


class _Namespace:
    def __init__(self, echo: bool) -> None:
        self._echo = echo

    async def connect(self, socket: Socket, auth: JSON) -> SocketHandler:
        socket.emit("auth", auth)
        return _Handler(socket, self._echo)


def create_conformance_app(settings: Settings) -> RootApp:
    """The suites' server, with ``settings`` made to match their READMEs."""
    settings = settings.conformance()
    engines = {
        "/engine.io/": EngineServer(settings, EchoApp),
        "/socket.io/": socketio_server(
            settings, {"/": _Namespace(echo=True), "/custom": _Namespace(echo=False)}
        ),
    }
    return RootApp(engines, None)


app = lazy_app(create_conformance_app)
"""The suites' server for ``hypercorn liveloop.conformance:app`` and the like."""
