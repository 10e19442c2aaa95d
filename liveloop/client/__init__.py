"""Live Loop's own client: Socket.IO v5 over trio-websocket, and the typed Live Loop API.

``open_client`` / :class:`LiveLoopClient` for Live Loop; ``open_socketio`` /
:class:`SocketIOClient` for any Socket.IO v5 server.
"""

from .api import (
    Ack,
    AnswerReceived,
    ChatMessage,
    ErrorInfo,
    IceCandidateReceived,
    LiveLoopClient,
    LiveLoopEvent,
    Match,
    OfferReceived,
    OtherEvent,
    RemoteStopped,
    RequestRefused,
    ServerError,
    open_client,
    parse_event,
)
from .socketio import (
    ConnectRefused,
    Disconnected,
    Event,
    RecoveryState,
    SocketIOClient,
    open_socketio,
)

__all__ = [
    "Ack",
    "AnswerReceived",
    "ChatMessage",
    "ConnectRefused",
    "Disconnected",
    "ErrorInfo",
    "Event",
    "IceCandidateReceived",
    "LiveLoopClient",
    "LiveLoopEvent",
    "Match",
    "OfferReceived",
    "OtherEvent",
    "RecoveryState",
    "RemoteStopped",
    "RequestRefused",
    "ServerError",
    "SocketIOClient",
    "open_client",
    "open_socketio",
    "parse_event",
]
