"""A :class:`~liveloop.peer.Peer`'s state as it moves from node to node (connection state
recovery across nodes), in one place: the peer exports and restores it, and the cluster's
handover builds one for a person reclaimed from Redis after their node was lost. Apart
from :mod:`liveloop.peer` so that :mod:`liveloop.cluster.handover` can use it without
importing the peer (which imports the cluster's notices).

On the wire it is the JSON object :meth:`PeerState.to_json` makes (inside a handed-over
record, :class:`~liveloop.server.recovery.Exported`)::

    {"phase": "idle" | "queued" | "in room", "ticket": int,
     "member": [name, image] | null,
     "limits": [last_room_age | null, [message ages], [ice-servers ages]],
     "seen": [event ids], "turn": str | null,
     "budget": [tokens, age] | null,           (optional)
     "call": [room, partner, name, image, partner node]}   (optional)
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from .ratelimit import LimiterState

FRESH_LIMITS = LimiterState(None, ())
"""Nothing counted yet: a person's limits when what counted them was lost."""


class Phase(enum.Enum):
    """Where a peer is, as far as it knows."""

    IDLE = "idle"
    QUEUED = "queued"
    IN_ROOM = "in room"


@attrs.frozen
class CallState:
    """The call a moving peer is in: the room, the partner's sid, name and image, and
    the node the partner lives on ("" if not known)."""

    room_id: str
    partner: str
    name: str
    image: str
    node: str


@attrs.frozen
class PeerState:
    """What a peer carries to another node. ``limits`` are ages (clock-free: see
    :meth:`~liveloop.ratelimit.RateLimiter.carry`), as is ``budget``
    (:meth:`~liveloop.ratelimit.RelayBudget.carry`)."""

    phase: Phase
    ticket: int
    member: tuple[str, str] | None = None
    limits: LimiterState = FRESH_LIMITS
    seen: tuple[str, ...] = ()
    turn: str | None = None
    budget: tuple[float, float] | None = None
    call: CallState | None = None

    def to_json(self) -> dict[str, Any]:
        limits = self.limits
        state: dict[str, Any] = {
            "phase": self.phase.value, "ticket": self.ticket,
            "member": None if self.member is None else list(self.member),
            "limits": [limits.last_room_age, list(limits.message_ages),
                       list(limits.ice_server_ages)],
            "seen": list(self.seen), "turn": self.turn,
            "budget": None if self.budget is None else list(self.budget)}
        call = self.call
        if call is not None:
            state["call"] = [call.room_id, call.partner, call.name, call.image, call.node]
        return state

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> PeerState:
        """The state :meth:`to_json` made; raises ValueError, TypeError or KeyError on
        anything else."""
        member = state["member"]
        if member is not None:
            name, image = member
            member = (str(name), str(image))
        last_room, messages, ice_servers = state["limits"]
        budget = state.get("budget")
        call = state.get("call")
        return cls(
            phase=Phase(state["phase"]), ticket=int(state["ticket"]),
            member=member,
            limits=LimiterState(last_room, tuple(messages), tuple(ice_servers)),
            seen=tuple(str(event_id) for event_id in state["seen"]),
            turn=state["turn"],
            budget=None if budget is None else (budget[0], budget[1]),
            call=None if call is None else CallState(*call))
