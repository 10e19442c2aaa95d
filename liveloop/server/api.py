"""What an application sees of the Socket.IO server.

An application registers one :class:`Namespace` per namespace name. When a client sends
CONNECT, the namespace's :meth:`Namespace.connect` decides: it returns the
:class:`SocketHandler` that will own that socket's state, or raises
:class:`ConnectRefused` (the client gets CONNECT_ERROR with its data).

All of one connection's handler calls (``on_event``, ``on_message``, ``on_disconnect``,
for every namespace of the connection) run one after another in that connection's actor
task, in arrival order: a handler owns its state without locks. A handler that awaits
delays that connection's next event and nobody else's.

Other actors talk to a socket's handler with :meth:`Socket.post` (non-blocking; the
message reaches ``on_message`` in the connection's task). Emitting is non-blocking too:
packets go into the connection's bounded outbox; a client whose outbox is full is
disconnected (reason ``"outbox overflow"``) instead of holding memory or blocking the
sender.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs

JSON = Any
"""A JSON-compatible value (dict, list, str, int, float, bool, None) or, in a binary
packet, ``bytes`` somewhere inside it."""


class ConnectRefused(Exception):
    """Raise from :meth:`Namespace.connect` to answer CONNECT_ERROR with ``data``."""

    def __init__(self, data: JSON) -> None:
        super().__init__(data)
        self.data = data


class SocketClosed(Exception):
    """The socket was disconnected before the operation could complete."""


class Socket(Protocol):
    """One client on one namespace. Every method is safe to call from any task."""

    @property
    def sid(self) -> str:
        """The Socket.IO socket id, unique to this connection and namespace."""

    @property
    def namespace(self) -> str: ...

    @property
    def connected(self) -> bool:
        """Whether the socket lives: true from connect to ``on_disconnect``, including
        while a recoverable client is away."""

    @property
    def present(self) -> bool:
        """Whether the client's transport is there now (false while it is away)."""

    def emit(self, event: str, *args: JSON) -> None:
        """Queue EVENT ``[event, *args]`` for the client, without waiting.

        Raises nothing: a closed socket drops it; a full outbox disconnects the client.
        """

    def emit_json(self, data: str) -> None:
        """As :meth:`emit`, with ``[event, *args]`` given as its JSON text, exactly as
        :func:`liveloop.wire.socketio.event_json` writes it (no bytes inside): written
        to the client as it is, with the recovery offset appended when it has one."""

    def post(self, message: object) -> None:
        """Deliver ``message`` to this socket's handler ``on_message``, without waiting.

        A message for a socket that is already closed is dropped. If the connection's
        mailbox is full, the connection is closed (reason ``"mailbox overflow"``): it is
        not keeping up, and the sender is never blocked by it.
        """

    async def call(self, event: str, *args: JSON) -> list[JSON]:
        """Emit with an ack request and wait for the client's ack arguments.

        Raises :class:`SocketClosed` if the socket closes first. It waits as long as
        that takes: put it under ``trio.fail_after`` for a deadline.
        """

    def disconnect(self) -> None:
        """Close this namespace: the client gets DISCONNECT, the handler ``on_disconnect``
        with reason ``"server namespace disconnect"``."""

    def drop(self) -> None:
        """Close the whole connection (its Engine.IO session, every namespace), reason
        ``"server shutting down"``: the client sees its transport close, so the official
        client reconnects by itself (a DISCONNECT would stop it). For draining."""


class Ack(Protocol):
    """The ack a client asked for with its event. Send it at most once."""

    def __call__(self, *args: JSON) -> None: ...


class SocketHandler(Protocol):
    """The state of one socket, owned by its connection's actor task."""

    async def on_event(self, event: str, args: list[JSON], ack: Ack | None) -> None:
        """A client EVENT (or BINARY_EVENT, attachments in place). ``ack`` is None
        when the client asked for none."""

    async def on_message(self, message: object) -> None:
        """A message another actor gave to :meth:`Socket.post`."""

    async def on_disconnect(self, reason: str) -> None:
        """The socket is gone (client or server disconnect, transport close, ping
        timeout, ...). Called exactly once, and nothing is called after it."""

    async def on_recover(self) -> None:
        """The client came back to this socket after a lost transport (recovery). Called
        in the new connection's task before the client sees its CONNECT answer; emits
        made here reach the client after the replay."""


class Namespace(Protocol):
    """A namespace's entry point."""

    async def connect(self, socket: Socket, auth: JSON) -> SocketHandler:
        """Accept (return the handler) or refuse (raise :class:`ConnectRefused`)."""


@attrs.frozen
class Drain:
    """The server drains (``liveloop serve`` got SIGTERM): posted to every session's app
    and, by the Socket.IO layer, to every handler's ``on_message``. A handler that need
    not keep its client (nobody in a call, say) calls :meth:`Socket.drop`; the server
    closes the rest when their time is up."""


DRAIN = Drain()
"""The one :class:`Drain` message."""


@attrs.frozen
class DisconnectReason:
    """The reasons handed to :meth:`SocketHandler.on_disconnect`, as socket.io names them."""

    CLIENT_NAMESPACE = "client namespace disconnect"
    SERVER_NAMESPACE = "server namespace disconnect"
    TRANSPORT_CLOSE = "transport close"
    TRANSPORT_ERROR = "transport error"
    PING_TIMEOUT = "ping timeout"
    PARSE_ERROR = "parse error"
    OUTBOX_OVERFLOW = "outbox overflow"
    MAILBOX_OVERFLOW = "mailbox overflow"
    SERVER_SHUTDOWN = "server shutting down"
    RECOVERY_OVERFLOW = "recovery buffer overflow"
    """The client was away, and what was kept for it outgrew the recovery bounds."""
