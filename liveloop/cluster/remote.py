"""A partner on another node, as seen by a connection on this one.

A room's members are fixed for its life, so the node a remote partner is on is known
when the room is made (the match notice carries it) and kept here: relaying to that
partner is one publish on that node's channel, with no lookup.
"""

from __future__ import annotations

import contextlib
import logging

import trio

from ..messages import Deliver, Fence
from ..server.api import JSON
from .notices import DeliverNotice, FenceNotice, Notice

log = logging.getLogger(__name__)


class _Elsewhere:
    """A partner not served by this node, as a :class:`~liveloop.server.api.Socket`
    that is only ever posted to."""

    __slots__ = ("_sid",)

    def __init__(self, sid: str) -> None:
        self._sid = sid

    @property
    def sid(self) -> str:
        return self._sid

    @property
    def namespace(self) -> str:
        return "/"

    @property
    def connected(self) -> bool:
        return True

    def emit(self, event: str, *args: JSON) -> None:
        """Never used: a partner is only posted to."""

    def emit_json(self, data: str) -> None:
        """Never used: a partner is only posted to."""

    async def call(self, event: str, *args: JSON) -> list[JSON]:
        raise NotImplementedError("a remote partner is only posted to")

    def disconnect(self) -> None:
        """Never used: a node disconnects only its own clients."""

    def drop(self) -> None:
        """Never used: a node drops only its own clients."""


class RemoteSocket(_Elsewhere):
    """A partner on another node: what is posted to it is published on its node's
    channel."""

    __slots__ = ("_node", "_publish")

    def __init__(self, sid: str, node: str, publish: trio.MemorySendChannel[Notice]) -> None:
        super().__init__(sid)
        self._node = node
        self._publish = publish

    @property
    def node(self) -> str:
        return self._node

    @property
    def present(self) -> bool:
        return True

    def _notice(self, message: Deliver) -> DeliverNotice:
        return DeliverNotice(self._sid, self._node, message.room_id, message.event,
                             message.json())

    async def send(self, message: Deliver) -> None:
        """Publish a relayed event for the partner; waits while the publisher is full
        (that slows down the sender only). Dropped once the node is stopping."""
        notice = self._notice(message)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            try:
                # Without a checkpoint when there is room: the relay's sender then goes
                # on with its next message in the same turn, and the publisher takes
                # them all in one write.
                self._publish.send_nowait(notice)
            except trio.WouldBlock:
                await self._publish.send(notice)

    def post(self, message: object) -> None:
        """As :meth:`send`, without waiting: dropped (and logged) if the publisher is
        full, as a full mailbox would drop a local partner. A :class:`Fence` (the partner
        moved) goes the same way."""
        notice: Notice
        if isinstance(message, Deliver):
            notice = self._notice(message)
        elif isinstance(message, Fence):
            notice = FenceNotice(self._sid, self._node, message.room_id)
        else:
            return
        try:
            self._publish.send_nowait(notice)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning("publisher full or closed: dropped a relay to %s", self._node)


class HeldSocket(_Elsewhere):
    """A partner whose node is lost and who may recover on another node: what is
    relayed to them is kept here (at most ``limit`` relays; later ones are dropped and
    logged) until they come back (the peer then sends it on, in order) or the window
    ends (their room ends, and this with it)."""

    __slots__ = ("_limit", "held")

    def __init__(self, sid: str, limit: int) -> None:
        super().__init__(sid)
        self._limit = limit
        self.held: list[Deliver] = []

    @property
    def present(self) -> bool:
        return False

    def post(self, message: object) -> None:
        if isinstance(message, Deliver):
            if len(self.held) < self._limit:
                self.held.append(message)
            else:
                log.warning("relays held for %s beyond %d: dropped", self._sid, self._limit)
