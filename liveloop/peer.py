"""The connection actor's Live Loop state: one :class:`Peer` per socket on ``/``.

All of a peer's methods run in its connection's own task, one after another (the server
layer's promise), so the peer owns its state without locks. It

- validates each client event (:mod:`.events`), applies the rate limits, checks that any
  target named is its own room and partner, and forwards a typed message to the
  matchmaker or its current room;
- answers every event: ``{ok: true}`` when honoured, otherwise ``error-message`` and, if
  the client asked for an ack, ``{ok: false, error}``; the ack comes once the change is
  done where every process sees it (with Redis: after the script has run; see
  :meth:`Peer.on_event`);
- is the only place that emits Live Loop events to its client. Matchmaker and rooms post
  it messages; it emits them in the order they arrive, and drops what belongs to a room
  it is no longer in. So, per connection: events leave in the order the server decided
  them, ``stop-by-remote-user`` never overtakes the ``match-done`` of its room, and
  nothing of an old room follows a new ``match-done``.

Backpressure: sends to the matchmaker and to rooms ``await`` on bounded channels, which
delays this client's next event and nobody else's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import attrs
import trio

from . import events
from .cluster.remote import RemoteSocket
from .config import Settings
from .errors import (
    ERROR_EVENT,
    ErrorCode,
    LiveLoopError,
    error_ack,
    error_event,
    ok_ack,
)
from .events import GetIceServers, NewMessage, RequestRoom, SendIceCandidates, StopCall
from .ice import IceServers, new_connection_id
from .messages import (
    Arrived,
    Avoid,
    Away,
    Deliver,
    Enqueue,
    Fence,
    Hangup,
    HangupReason,
    Matched,
    MatchmakerMessage,
    Member,
    PartnerMoved,
    Receipt,
    Refused,
    Returned,
    RoomEnded,
    RoomMessage,
    Withdraw,
    release,
)
from .metrics import Metrics
from .peerstate import CallState, PeerState, Phase
from .ratelimit import RateLimiter, RelayBudget
from .room import relayed
from .server.api import DRAIN, JSON, Ack, Socket
from .status import Snapshot

log = logging.getLogger(__name__)

SEEN_IDS = 128
"""Event ids remembered per connection to drop a client's retries: a retry comes within
the client's ack timeout times its retries, far fewer events than this later."""

HANDLED_EVENTS = frozenset(events.INBOUND)
"""Every client event a peer handles; anything else is answered ``unknown-event``."""

UNAVAILABLE = ("the server could not record this change (its shared state is out of reach) "
               "and closes this connection: reconnect, then try again")
"""The ``unavailable`` refusal's message (docs/events.md, "What an ack means")."""


@runtime_checkable
class Relocation(Protocol):
    """What a node offers a peer that moves between nodes (connection state recovery
    across nodes): the Redis matchmaker implements it; in one process there is none."""

    def node_of(self, socket: Socket) -> str:
        """The node ``socket`` lives on (a partner's, for a peer's exported state)."""

    def rejoin(self, socket: Socket, room_id: str | None, partner: str, partner_node: str
               ) -> tuple[trio.MemorySendChannel[RoomMessage] | None, Socket | None]:
        """``socket`` (a peer handed over from another node) is served here from now on:
        notices for it reach it here; with ``room_id``, the room's inbox here and the
        way to the partner."""


@attrs.frozen
class Call:
    """The room a peer is in: its id, its inbox, and the partner."""

    room_id: str
    inbox: trio.MemorySendChannel[RoomMessage] = attrs.field(eq=False, repr=False)
    partner: Member


class Peer:
    """A :class:`~liveloop.server.api.SocketHandler` for one Live Loop client."""

    def __init__(self, socket: Socket, settings: Settings,
                 matchmaker: trio.MemorySendChannel[MatchmakerMessage],
                 snapshot: Callable[[], Snapshot], clock: Callable[[], float],
                 metrics: Metrics, ice: IceServers | None = None,
                 relocation: Relocation | None = None, *, confirm: bool = False) -> None:
        self._socket = socket
        self._relocation = relocation
        self._sid = socket.sid
        self._settings = settings
        self._matchmaker = matchmaker
        self._snapshot = snapshot
        self._limits = RateLimiter(settings, clock)
        self._relays = RelayBudget(settings, clock)
        self._metrics = metrics
        self._relayed = metrics.relayed
        self._phase = Phase.IDLE
        self._call: Call | None = None
        self._member: Member | None = None
        # Numbers this peer's requests to the matchmaker, so that an answer to a request
        # withdrawn since (stop-call while queued) is recognised and ignored.
        self._ticket = 0
        # The last SEEN_IDS event ids relayed (insertion order is age); made at the
        # first id, as most clients of the seed's API send none.
        self._seen: dict[str, None] | None = None
        self._draining = False
        """The server drains: this peer's connection closes as soon as it is not in a call."""
        self._ice = ice
        # This connection's id in TURN usernames; made on the first get-ice-servers.
        self._turn_id: str | None = None
        self._confirm = confirm
        # While an event is handled with `confirm`: the receipts its changes carry
        # (`applied`), all waited for before its ack.
        self._receipts: list[Receipt] | None = None
        self._arrived = False
        """Restored from another node's export: the matchmaker is told on recovery."""

    # -- state, for the namespace and tests --------------------------------------------

    @property
    def sid(self) -> str:
        return self._sid

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def call(self) -> Call | None:
        return self._call

    # -- SocketHandler -------------------------------------------------------------------

    async def on_event(self, event: str, args: list[JSON], ack: Ack | None) -> None:
        """Handle one client event; always answers (ack and/or ``error-message``), never
        raises for anything the client sent.

        The answer comes once what the event changed is done for everyone: in one
        process, once the matchmaker or room has the message (their mailboxes order
        every change); with ``confirm`` (shared state in Redis), once each change's
        script has run, so an event another client sends after this ack, to any node,
        is ordered after it (docs/events.md, "What an ack means"). A change whose script
        failed, or that is not confirmed within ``node_timeout``, refuses the event
        ``unavailable`` instead (whatever else it was answered), and the connection is
        dropped right after the refusal: nobody knows the person's state any more."""
        receipts: list[Receipt] | None = [] if self._confirm else None
        self._receipts = receipts
        error: LiveLoopError | None = None
        answer: dict[str, object] | None = None
        try:
            if event not in HANDLED_EVENTS:
                raise LiveLoopError(ErrorCode.UNKNOWN_EVENT,
                                    f"unknown event {str(event)[:64]!r}")
            payload = events.parse(event, args[0] if args else None, self._settings)
            answer = await self._dispatch(payload)
        except LiveLoopError as caught:
            error = caught
        finally:
            self._receipts = None
        unknown = False
        if receipts:
            # Bounded: a change the node could not apply fails its receipt; one still
            # waiting after node_timeout is stuck behind a slow Redis and may yet be
            # applied. Either way nobody knows what this person's state is: the
            # connection is dropped below, after the refusal, and its Withdraw follows
            # the change in the node's mailbox (the node drops its clients as well, at
            # its next heartbeat, when a script failed).
            with trio.move_on_after(self._settings.node_timeout):
                for receipt in receipts:
                    await receipt.wait()
            unknown = not all(receipt.is_set() and not receipt.failed
                              for receipt in receipts)
            if unknown:
                error = LiveLoopError(ErrorCode.UNAVAILABLE, UNAVAILABLE)
        if error is not None:
            self._metrics.error(error.code, event if event in HANDLED_EVENTS else "other")
            self._socket.emit(ERROR_EVENT, error_event(error, str(event)[:64]))
            if ack is not None:
                ack(error_ack(error))
            if unknown:
                self._socket.drop()
                return
        else:
            if ack is not None:
                ack(ok_ack() if answer is None else {**ok_ack(), **answer})
        self._leave_if_draining()

    async def on_message(self, message: object) -> None:
        """Act on a message from the matchmaker or a room; emit what the client must see."""
        if type(message) is Deliver:  # the hot one: a relayed event
            if self._call is not None and self._call.room_id == message.room_id:
                if message.args is None:
                    self._socket.emit(message.event, message.payload)
                else:  # from another node, encoded there
                    self._socket.emit_json(message.args)
            return
        if message is DRAIN:
            self._draining = True
        elif isinstance(message, PartnerMoved):
            call = self._call
            if call is not None and call.room_id == message.room_id:
                # The fence goes the old way, behind everything already sent that way;
                # the new node holds what we send it directly until the fence is through.
                old = call.partner.socket
                old.post(Fence(call.room_id))
                self._call = attrs.evolve(call, partner=attrs.evolve(
                    call.partner, socket=message.socket))
                # Relays kept while the partner's node was lost go first (in order).
                for deliver in getattr(old, "held", ()):
                    await self._send_to(message.socket, deliver)
        elif isinstance(message, Matched):
            await self._matched(message)
        elif isinstance(message, RoomEnded):
            await self._room_ended(message)
        elif isinstance(message, Refused):
            if self._phase is Phase.QUEUED and message.ticket == self._ticket:
                self._phase = Phase.IDLE
                error = LiveLoopError(message.code, message.message)
                self._metrics.error(error.code, events.REQUEST_ROOM)
                self._socket.emit(ERROR_EVENT, error_event(error, events.REQUEST_ROOM))
        else:
            # The type only: a message may carry a name or a thumbnail.
            log.warning("unexpected message", extra={
                "sid": self._sid, "type": type(message).__name__})
        self._leave_if_draining()

    def _leave_if_draining(self) -> None:
        """While the server drains, only people in a call keep their connection: the
        others' closes, and their client reconnects (to another node) by itself."""
        if self._draining and self._phase is not Phase.IN_ROOM:
            self._socket.drop()

    async def on_away(self) -> None:
        """The connection is lost and the client may come back: a queued peer keeps its
        place but must not be paired meanwhile (the Redis matchmaker marks it)."""
        if self._phase is Phase.QUEUED:
            await self._tell_matchmaker(Away(self._sid))

    async def on_recover(self) -> None:
        """Back after a lost connection, with the same state: a queued peer, skipped by
        the matchmaker while away, asks it to look again. A peer that came from another
        node first has the shared state point here."""
        if self._arrived:
            self._arrived = False
            await self._tell_matchmaker(Arrived(self._sid))
        if self._phase is Phase.QUEUED:
            await self._tell_matchmaker(Returned(self._sid))

    async def on_disconnect(self, reason: str) -> None:
        """Leave the queue or the room, whatever state the matchmaker believes we are in."""
        self._phase = Phase.IDLE
        self._call = None
        if self._ticket:
            # Even when idle: the matchmaker, not this peer, knows whether an Enqueue of
            # ours was paired before our last word reached it. Withdraw undoes either.
            await self._tell_matchmaker(Withdraw(self._sid, HangupReason.DISCONNECT))

    # -- moving to another node (connection state recovery across nodes) -------------

    def export_state(self) -> dict[str, Any]:
        """This peer's state as JSON (:class:`~liveloop.peerstate.PeerState`), for
        another node to go on from (:meth:`restore`): phase, ticket, name and image, the
        call's room and partner (with the partner's node), rate limits as ages, the relay
        budget, the recent event ids."""
        member = self._member
        call = self._call
        moving = None
        if call is not None:
            partner = call.partner
            relocation = self._relocation
            node = relocation.node_of(partner.socket) if relocation is not None else ""
            moving = CallState(call.room_id, partner.sid, partner.name, partner.image, node)
        return PeerState(
            phase=self._phase, ticket=self._ticket,
            member=None if member is None else (member.name, member.image),
            limits=self._limits.carry(), seen=tuple(self._seen or ()),
            turn=self._turn_id, budget=self._relays.carry(), call=moving).to_json()

    def restore(self, exported: dict[str, Any]) -> None:
        """Go on from another node's :meth:`export_state` (this peer is new, on the
        same ``sid``, made with a relocation)."""
        relocation = self._relocation
        assert relocation is not None
        state = PeerState.from_json(exported)
        self._ticket = state.ticket
        if state.member is not None:
            name, image = state.member
            self._member = Member(self._sid, name, image, self._socket)
        self._limits.resume(state.limits)
        self._relays.resume(state.budget)
        for event_id in state.seen:
            self._remember(event_id)
        self._turn_id = state.turn
        call = state.call
        if state.phase is Phase.IN_ROOM and call is not None:
            inbox, partner_socket = relocation.rejoin(self._socket, call.room_id,
                                                      call.partner, call.node)
            if inbox is not None and partner_socket is not None:
                self._call = Call(call.room_id, inbox, Member(call.partner, call.name,
                                                              call.image, partner_socket))
                self._phase = state.phase
        else:
            relocation.rejoin(self._socket, None, "", "")
            self._phase = state.phase
        self._arrived = True

    # -- client events ---------------------------------------------------------------

    async def _dispatch(self, payload: events.Inbound) -> dict[str, object] | None:
        """Act on one valid event; returns what its ack adds to ``ok: true``, if any."""
        if isinstance(payload, GetIceServers):
            return self._ice_servers()
        if isinstance(payload, RequestRoom):
            await self._request_room(payload)
        elif isinstance(payload, StopCall):
            await self._stop_call(payload)
        else:
            await self._relay(payload)
        return None

    async def _request_room(self, request: RequestRoom) -> None:
        call = self._call
        stale = request.room_id is not None and (
            call is None or request.room_id != call.room_id)
        if self._phase is Phase.QUEUED:
            if stale:
                raise LiveLoopError(ErrorCode.INVALID_ROOM,
                                    "roomId names no room of yours; you are still queued")
            return  # asking again while queued changes nothing
        if self._snapshot().queue_size >= self._settings.max_queue:
            raise LiveLoopError(ErrorCode.QUEUE_FULL, "the queue is full, try again later")
        self._check_rate(events.REQUEST_ROOM)
        member = Member(self._sid, request.name, request.user_image, self._socket)
        if call is not None:  # "Next"
            self._leave_call()
            await self._tell_matchmaker(Avoid(self._sid, call.partner.sid))
            await self._tell_room(call, Hangup(self._sid, HangupReason.NEXT,
                                               self._receipt()))
        await self._enqueue(member)
        if stale:
            raise LiveLoopError(ErrorCode.INVALID_ROOM,
                                "roomId names no room of yours; you are queued anyway")

    def _ice_servers(self) -> dict[str, object]:
        """The ``get-ice-servers`` answer (without ``ok``), rate-limited."""
        self._check_rate(events.GET_ICE_SERVERS)
        if self._ice is None:
            return {"iceServers": [], "ttl": self._settings.turn_ttl}
        if self._turn_id is None:
            self._turn_id = new_connection_id()
        return self._ice.answer(self._turn_id)

    async def _stop_call(self, stop: StopCall) -> None:
        if self._phase is Phase.IN_ROOM:
            call = self._check_target(stop.room_id, stop.target)
            self._leave_call()
            await self._tell_room(call, Hangup(self._sid, HangupReason.STOP,
                                               self._receipt()))
        elif self._phase is Phase.QUEUED:
            if stop.room_id is not None:
                raise LiveLoopError(ErrorCode.INVALID_ROOM,
                                    "roomId names no room of yours; nothing stopped")
            if stop.target is not None:
                raise LiveLoopError(ErrorCode.INVALID_TARGET,
                                    "you have no partner; nothing stopped")
            self._phase = Phase.IDLE
            await self._tell_matchmaker(Withdraw(self._sid, HangupReason.STOP,
                                                 self._receipt()))
        else:
            raise LiveLoopError(ErrorCode.NOT_IN_ROOM, "you are not in a call")

    def _remember(self, event_id: str) -> None:
        seen = self._seen
        if seen is None:
            seen = self._seen = {}
        seen[event_id] = None
        if len(seen) > SEEN_IDS:
            del seen[next(iter(seen))]

    async def _relay(self, payload: events.Relayed) -> None:
        event_id: str | None = None
        if not isinstance(payload, SendIceCandidates):  # candidates repeat harmlessly
            event_id = payload.id
            if event_id is not None and self._seen is not None and event_id in self._seen:
                return  # a client's retry of an event already relayed: ack it ok again
        call = self._check_target(payload.room_id, payload.target)
        retry_after = self._relays.take()
        if retry_after is not None:
            self._metrics.refused("relay_budget")
            raise LiveLoopError(ErrorCode.RATE_LIMITED,
                                f"too many relayed events, retry in {retry_after:g} s",
                                retry_after=retry_after)
        if isinstance(payload, NewMessage):
            self._check_rate(events.NEW_MESSAGE)
        if call.inbox.statistics().open_receive_channels == 0:
            # The room has ended; its RoomEnded is on its way to us.
            raise LiveLoopError(ErrorCode.NOT_IN_ROOM, "the call has ended")
        assert self._member is not None  # set when this peer queued for the call
        deliver = relayed(payload, call.room_id, self._member)
        partner = call.partner.socket
        if type(partner) is RemoteSocket:
            await partner.send(deliver)  # one publish on the partner's node's channel
        else:
            partner.post(deliver)
        self._relayed[type(payload)].inc()
        if isinstance(payload, NewMessage):
            # Our own copy through our mailbox: it follows this event's ack, as the
            # partner's does.
            self._socket.post(deliver)
        if event_id is not None:
            self._remember(event_id)

    # -- server messages ---------------------------------------------------------------

    async def _matched(self, matched: Matched) -> None:
        if self._phase is not Phase.QUEUED or matched.ticket != self._ticket:
            # An answer to a request we withdrew; our Withdraw ends that room.
            return
        self._phase = Phase.IN_ROOM
        self._call = Call(matched.room_id, matched.inbox, matched.partner)
        partner = matched.partner
        self._socket.emit(events.MATCH_DONE, events.match_done(
            room_id=matched.room_id, partner_sid=partner.sid, partner_name=partner.name,
            partner_image=partner.image, initiator=matched.initiator))

    async def _room_ended(self, ended: RoomEnded) -> None:
        if self._call is None or self._call.room_id != ended.room_id:
            return  # a room we have left already
        self._leave_call()
        self._socket.emit(events.STOP_BY_REMOTE_USER)
        if ended.requeue and self._member is not None:
            await self._enqueue(self._member)

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    async def _send_to(partner: Socket, deliver: Deliver) -> None:
        if type(partner) is RemoteSocket:
            await partner.send(deliver)
        else:
            partner.post(deliver)

    def _check_target(self, room_id: str | None, target: str | None) -> Call:
        """The current call, if ``room_id`` and ``target`` (when given) name it."""
        call = self._call
        if call is None:
            raise LiveLoopError(ErrorCode.NOT_IN_ROOM, "you are not in a call")
        if room_id is not None and room_id != call.room_id:
            raise LiveLoopError(ErrorCode.INVALID_ROOM, "roomId is not your room")
        if target is not None and target != call.partner.sid:
            raise LiveLoopError(ErrorCode.INVALID_TARGET, "target is not your partner")
        return call

    def _check_rate(self, event: str) -> None:
        retry_after = self._limits.check(event)
        if retry_after is not None:
            raise LiveLoopError(ErrorCode.RATE_LIMITED,
                                f"too many {event}, retry in {retry_after:g} s",
                                retry_after=retry_after)

    def _leave_call(self) -> None:
        self._call = None
        self._phase = Phase.IDLE

    async def _enqueue(self, member: Member) -> None:
        self._member = member
        if self._draining:
            return  # nobody is matched here any more: the connection is about to close
        self._ticket += 1
        self._phase = Phase.QUEUED
        await self._tell_matchmaker(Enqueue(member, self._ticket, self._receipt()))

    def _receipt(self) -> Receipt | None:
        """A receipt for the shared state to set once the change about to be sent is
        applied (or failed), if the current event's ack waits for that
        (:meth:`on_event`)."""
        if self._receipts is None:
            return None
        applied = Receipt()
        self._receipts.append(applied)
        return applied

    async def _tell_matchmaker(self, message: MatchmakerMessage) -> None:
        try:
            await self._matchmaker.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            release(message)
            # Only when the matchmaker has stopped: at shutdown (every peer then gets
            # here, hence no error), or when it died, which ends the process anyway.
            log.info("matchmaker stopped; message dropped", extra={
                "sid": self._sid, "type": type(message).__name__})

    async def _tell_room(self, call: Call, message: RoomMessage) -> bool:
        """Send to the room; False if it has ended (its RoomEnded is then on its way)."""
        try:
            await call.inbox.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            release(message)  # the room has ended: nothing left to wait for
            return False
        return True


class LiveLoopNamespace:
    """The :class:`~liveloop.server.api.Namespace` for ``/``: every connection gets a
    :class:`Peer`. Connecting needs no auth; any auth payload is ignored."""

    def __init__(self, settings: Settings,
                 matchmaker: trio.MemorySendChannel[MatchmakerMessage],
                 snapshot: Callable[[], Snapshot],
                 clock: Callable[[], float] = trio.current_time,
                 metrics: Metrics | None = None,
                 ice: IceServers | None = None,
                 relocation: Relocation | None = None, *, confirm: bool = False) -> None:
        self._settings = settings
        self._confirm = confirm
        self._relocation = relocation
        self._metrics = metrics if metrics is not None else Metrics(enabled=False)
        self._matchmaker = matchmaker
        self._snapshot = snapshot
        self._clock = clock
        self._ice = ice

    async def connect(self, socket: Socket, auth: JSON) -> Peer:
        """Accept: a fresh, idle peer for ``socket``."""
        return Peer(socket, self._settings, self._matchmaker, self._snapshot, self._clock,
                    self._metrics, self._ice, self._relocation, confirm=self._confirm)

    async def restore(self, socket: Socket, state: Any) -> Peer:
        """A peer for ``socket`` handed over from another node, going on from ``state``
        (:meth:`Peer.export_state`). Only with a relocation (Redis); raises otherwise."""
        if self._relocation is None:
            raise RuntimeError("nothing to restore from without shared state")
        peer = await self.connect(socket, None)
        peer.restore(state)
        return peer
