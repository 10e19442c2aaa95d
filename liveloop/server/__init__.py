"""A Socket.IO v5 server on Trio, over the sans-IO codec in :mod:`liveloop.wire`."""

from __future__ import annotations

from collections.abc import Mapping

from ..config import Settings
from ..metrics import Metrics
from .api import Ack, ConnectRefused, Namespace, Socket, SocketClosed, SocketHandler
from .engine import EngineServer
from .recovery import RecoveryStore
from .sockets import Recovery, SocketIOConnection

__all__ = [
    "Ack",
    "ConnectRefused",
    "EngineServer",
    "Namespace",
    "Socket",
    "SocketClosed",
    "SocketHandler",
    "socketio_server",
]


def socketio_server(settings: Settings, namespaces: Mapping[str, Namespace],
                    metrics: Metrics | None = None,
                    store: RecoveryStore | None = None) -> EngineServer:
    """An Engine.IO server whose sessions speak Socket.IO with these namespaces; it
    counts into ``metrics`` (none: counts nothing). Recovery records are kept in
    ``store`` (none: in this process only)."""
    recovery = Recovery(settings, store, metrics)
    return EngineServer(settings, lambda: SocketIOConnection(settings, namespaces, recovery),
                        metrics, actors=(recovery.run,))
