"""The room actor: one task per pair, owning its two members.

A room relays what one member sends to the other, and ends when a member hangs up (stop,
Next, or disconnect). It never emits to a socket: it posts :class:`~.messages.Deliver`
and :class:`~.messages.RoomEnded` to the members' connections, which emit them in order,
so nothing of this room can reach a client before its ``match-done`` or after the
connection has moved on.

Its inbox is a bounded memory channel; senders ``await`` on it. The room itself never
awaits anything but its inbox (posting never blocks), so the inbox drains at CPU speed.
When the room ends it closes the inbox: later senders fail at once and drop the message.
"""

from __future__ import annotations

import logging

import trio

from . import events
from .config import Settings
from .events import CallAnswer, CallOffer, NewMessage, SendIceCandidates
from .messages import Deliver, Forward, Hangup, Member, RoomEnded, RoomMessage

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
        """Relay until a member hangs up, then tell the partner and return. The inbox is
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
            log.warning("room %s: dropped %r from a non-member", self.room_id, message)
            return
        sender = self.first if partner is self.second else self.second
        if isinstance(message, Hangup):
            self.ended = True
            partner.socket.post(RoomEnded(self.room_id, requeue=self._requeue))
        else:
            self._relay(message, sender, partner)

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

    def _relay(self, message: Forward, sender: Member, partner: Member) -> None:
        event = message.event
        room_id = self.room_id
        if isinstance(event, CallOffer):
            partner.socket.post(Deliver(room_id, events.CALL_OFFER, events.offer_relayed(
                room_id=room_id, sender_sid=sender.sid, sender_name=sender.name,
                offer=event.offer)))
        elif isinstance(event, CallAnswer):
            partner.socket.post(Deliver(room_id, events.CALL_ANSWER, events.answer_relayed(
                room_id=room_id, sender_sid=sender.sid, sender_name=sender.name,
                ans=event.ans)))
        elif isinstance(event, SendIceCandidates):
            partner.socket.post(Deliver(room_id, events.NEW_ICE_CANDIDATES,
                                        events.candidate_relayed(event.candidate)))
        elif isinstance(event, NewMessage):
            payload = events.message_relayed(sender_sid=sender.sid, message=event.message)
            # The seed: both users receive Message:recived, the sender as confirmation.
            for member in (sender, partner):
                member.socket.post(Deliver(room_id, events.MESSAGE_RECEIVED, payload))
