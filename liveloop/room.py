"""The room actor: one task per pair, owning its two members.

A room ends when a member hangs up (stop, Next, or disconnect), and tells the partner. It
never emits to a socket: it posts :class:`~.messages.RoomEnded` to the members'
connections, which emit in order, so nothing of this room can reach a client before its
``match-done`` or after the connection has moved on.

What one member sends the other does not pass through here: the members are fixed for
the room's life, so a connection posts :class:`~.messages.Deliver` straight to its
partner (:func:`relayed` builds it), one task switch fewer per relayed message. Ordering
holds: a member's relays are posted before its :class:`~.messages.Hangup` is even sent
here, so its partner gets them before the :class:`~.messages.RoomEnded`; and a partner
that has left drops what still comes for the old room. The room's inbox being closed
tells a sender that the call has ended.

Its inbox is a bounded memory channel; senders ``await`` on it. The room itself never
awaits anything but its inbox (posting never blocks), so the inbox drains at CPU speed.
When the room ends it closes the inbox: later senders fail at once and drop the message.
"""

from __future__ import annotations

import logging

import trio

from . import events
from .config import Settings
from .events import CallAnswer, CallOffer, NewMessage, Relayed, SendIceCandidates
from .messages import Deliver, Member, RoomEnded, RoomMessage

log = logging.getLogger(__name__)

INBOX_SIZE = 64
"""Messages a room's inbox holds before its senders wait."""


class Room:
    """Two members, ``first`` the one who waited longer (the call's initiator)."""

    def __init__(self, room_id: str, first: Member, second: Member, settings: Settings,
                 inbox: trio.MemoryReceiveChannel[RoomMessage]) -> None:
        self.room_id = room_id
        self.first = first
        self.second = second
        self._requeue = settings.requeue_partner
        self._inbox = inbox
        self.ended = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Wait until a member hangs up, then tell the partner and return. The inbox is
        closed when this returns or raises."""
        with self._inbox:
            task_status.started()
            async for message in self._inbox:
                self.handle(message)
                if self.ended:
                    return

    def handle(self, message: RoomMessage) -> None:
        """Act on one message. Messages from someone who is not a member are dropped."""
        partner = self._partner_of(message.sender)
        if partner is None or self.ended:
            log.warning("message from a non-member dropped", extra={
                "room": self.room_id, "type": type(message).__name__})
            return
        self.ended = True
        partner.socket.post(RoomEnded(self.room_id, requeue=self._requeue))

    def abandon(self) -> None:
        """The room failed: tell both members it has ended, as if the other had left."""
        self.ended = True
        for member in (self.first, self.second):
            member.socket.post(RoomEnded(self.room_id, requeue=self._requeue))

    def _partner_of(self, sid: str) -> Member | None:
        if sid == self.first.sid:
            return self.second
        if sid == self.second.sid:
            return self.first
        return None


def relayed(event: Relayed, room_id: str, sender: Member) -> Deliver:
    """What ``sender``'s partner in ``room_id`` gets for ``event``: exactly the seed's
    payload, with ``from`` and the sender's name stamped by the server."""
    if isinstance(event, CallOffer):
        return Deliver(room_id, events.CALL_OFFER, events.offer_relayed(
            room_id=room_id, sender_sid=sender.sid, sender_name=sender.name,
            offer=event.offer, event_id=event.id))
    if isinstance(event, CallAnswer):
        return Deliver(room_id, events.CALL_ANSWER, events.answer_relayed(
            room_id=room_id, sender_sid=sender.sid, sender_name=sender.name,
            ans=event.ans, event_id=event.id))
    if isinstance(event, SendIceCandidates):
        return Deliver(room_id, events.NEW_ICE_CANDIDATES,
                       events.candidate_relayed(event.candidate))
    assert isinstance(event, NewMessage)
    # The seed: both users receive Message:recived, the sender as confirmation.
    return Deliver(room_id, events.MESSAGE_RECEIVED,
                   events.message_relayed(sender_sid=sender.sid, message=event.message,
                                          event_id=event.id))
