"""Connection state recovery across nodes: a record handed from node to node.

A socket's recovery record (its history, and its :class:`~liveloop.peer.Peer`: phase,
room, partner, limits, event ids) lives on the node that serves the socket, as in one
process. A client that reconnects to another node (another worker, or a balancer that
moved it) claims its record there:

1. the node it reached (the *claimant*) finds the owner: the node named in Redis at
   ``o:<pid>`` (set by the last node the record moved to), else the node the ``pid``
   itself names (``<node>.<random>``, made where the socket first connected);
2. it publishes a claim (``C``) on the owner's channel and waits up to
   ``node_timeout`` for the answer (``H``);
3. the owner claims the socket as a local reconnect would (closing a half-open old
   connection; its away task hands the handler over), so at most one claimant, here or
   anywhere, ever gets it; it publishes the exported record to the claimant and from then
   on *forwards* what reaches it for that person (relays, room ends, matches), wrapped
   (``W``), to the claimant;
4. the claimant restores the socket under the same ``sid`` and ``pid``, points Redis at
   itself (the MOVE script: the person's record, the room's member node, the node sets,
   and ``o:<pid>``), and sends the partner's node a "moved" notice (``V``). The partner's
   peer then sends a fence (``F``) the old way (through the old node, which forwards it)
   and relays straight to the new node from then on.

Order: the new node applies forwarded notices at once and *holds* those that came
straight for the person until the fence arrives through the old node, so nothing the
partner sent the old way is overtaken by what it sent the new way. The hold is bounded
(:data:`HOLD_LIMIT` notices, ``node_timeout`` seconds): past either it is released and
order is no longer promised (docs/cluster.md).

:class:`HandoverMixin` holds this logic for :class:`~liveloop.cluster.node.ClusterMatchmaker`;
:class:`ClusterRecoveryStore` is the :class:`~liveloop.server.recovery.RecoveryStore` the
server layer reaches it through.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ..config import Settings
from ..messages import Deliver, Fence, MatchmakerMessage, PartnerMoved, RoomEnded, RoomMessage
from ..peerstate import CallState, PeerState, Phase
from ..server.api import Socket
from ..server.recovery import Exported, Exporter, MemoryStore, new_pid
from . import notices as wire
from .notices import (
    ClaimNotice,
    DeliverNotice,
    EndNotice,
    FenceNotice,
    ForwardedNotice,
    HandoverNotice,
    LostNotice,
    MovedNotice,
    Notice,
    PersonNotice,
)
from .remote import HeldSocket, RemoteSocket

log = logging.getLogger(__name__)

HOLD_LIMIT = 1024
"""Notices held for one person who moved, waiting for the partner's fence, at most."""

MOVED_REMEMBERED = 10_000
"""People who left this node that it still forwards to, at most (oldest forgotten)."""

POINTER_TTL_MS = 24 * 3600 * 1000
"""How long ``o:<pid>`` (where a moved record lives) is kept: a session that moved and
then lives on for more than a day cannot be claimed by another node afterwards."""


class _Claim:
    """A claimant's wait for the owner's answer."""

    __slots__ = ("answered", "record")

    def __init__(self) -> None:
        self.answered = trio.Event()
        self.record: Any = None


class _Hold:
    """A person handed over to this node: notices for them before their socket is
    restored (``early``), and, while ``fenced``, those that came straight (``held``)."""

    __slots__ = ("early", "fenced", "held", "socket", "until")

    def __init__(self) -> None:
        self.socket: Socket | None = None
        self.early: list[tuple[PersonNotice, bool]] = []
        self.fenced = False
        self.held: list[PersonNotice] = []
        self.until = 0.0


class HandoverMixin:
    """The hand-over half of :class:`~liveloop.cluster.node.ClusterMatchmaker`."""

    node_id: str
    _settings: Settings
    _prefix: str
    _client: Any
    _nursery: trio.Nursery | None
    _publish: trio.MemorySendChannel[Notice]
    _sockets: dict[str, Socket]
    _queued_at: dict[str, float]
    mailbox: trio.MemorySendChannel[MatchmakerMessage]

    def _init_handover(self) -> None:
        self._exporter: Exporter | None = None
        self._claims: dict[str, _Claim] = {}
        self._holds: dict[str, _Hold] = {}
        self._moved: dict[str, str] = {}  # sid -> the node it moved to; oldest first
        self._beaten = trio.Event()
        """Set (and replaced) after each of this node's heartbeats."""

    # abstract here, defined by the node
    def _open_room(self, room_id: str) -> Any: ...
    def _close_room(self, room_id: str) -> None: ...
    def _post_notice(self, notice: PersonNotice) -> None: ...
    async def _change(self, name: str, args: Any) -> Any: ...
    async def _apply(self, notices: Any) -> None: ...

    # -- the claimant -----------------------------------------------------------------

    async def claim(self, pid: str, namespace: str) -> Exported | None:
        """Claim ``pid``'s record from the node that holds it (see the module
        docstring); None if nobody answers with it within ``node_timeout``."""
        errors = _redis_errors()
        try:
            with trio.fail_after(self._settings.node_timeout):
                owner = await self._client.get(f"{self._prefix}o:{pid}")
        except errors as error:
            log.info("node %s: no claim (%r)", self.node_id, error)
            return None
        if not owner:
            owner, dot, _ = pid.partition(".")
            if not dot:
                return None
        if owner == self.node_id:
            return None  # it was here, and is gone: expired
        try:
            with trio.fail_after(self._settings.node_timeout):
                registered = await self._client.sismember(f"{self._prefix}nodes", owner)
        except errors as error:
            log.info("node %s: no claim (%r)", self.node_id, error)
            return None
        exported: Exported | None = None
        if not registered:  # lost (or long gone): only Redis may still have the person
            exported = await self._reclaim(pid, owner, namespace)
        else:
            exported = await self._ask(pid, owner, namespace)
        if exported is None:
            return None
        try:
            with trio.fail_after(self._settings.node_timeout):
                await self._client.set(f"{self._prefix}o:{pid}", self.node_id,
                                       px=POINTER_TTL_MS)
        except errors as error:  # a later claim elsewhere will ask the old node: it fails
            log.warning("node %s: where %s lives not written (%r)", self.node_id, pid, error)
        return exported

    async def _ask(self, pid: str, owner: str, namespace: str) -> Exported | None:
        """The record from its live owner; if the owner does not answer within the
        timeout, it may be dying: reclaim once it is declared lost."""
        token = secrets.token_urlsafe(9)
        claim = self._claims[token] = _Claim()
        try:
            await self._publish.send(ClaimNotice(pid, owner, token, self.node_id, namespace))
            with trio.move_on_after(self._settings.node_timeout):
                await claim.answered.wait()
        finally:
            del self._claims[token]
        exported: Exported | None = None
        if claim.answered.is_set():
            if claim.record is None:
                return None
            try:
                exported = Exported.from_json(claim.record)
            except (ValueError, TypeError, KeyError) as error:
                log.warning("node %s: a bad record was handed over (%r)", self.node_id,
                            error)
                return None
        else:
            # No answer: the owner may be gone. Once it is declared lost its people
            # are away in Redis, and can be reclaimed from there.
            exported = await self._reclaim(pid, owner, namespace)
        return exported

    async def _reclaim(self, pid: str, owner: str, namespace: str) -> Exported | None:
        """``pid``'s person from Redis, if their node ``owner`` is (within another
        ``node_timeout``) declared lost and they are away there: the call or the queue
        place, the ticket and the name; no history (what the lost node held is
        missing), fresh limits and event ids."""
        parts = pid.split(".")
        if len(parts) != 3:
            return None
        timeout = self._settings.node_timeout
        try:
            with trio.fail_after(timeout * 2):
                while await self._client.sismember(f"{self._prefix}nodes", owner):
                    await self._beaten.wait()  # a declaration comes with some heartbeat
                found = await self._change("RECLAIM", (parts[1], pid, self.node_id))
        except _redis_errors() as error:
            log.info("node %s: %s not reclaimed (%r)", self.node_id, pid, error)
            return None
        if not found:
            return None
        state, ticket, name, image, room, partner, partner_node = (str(f) for f in found)
        peer = PeerState(
            Phase.QUEUED if state == "q" else Phase.IN_ROOM, int(ticket), (name, image),
            call=CallState(room, partner, "", "", partner_node) if state == "r" else None)
        log.info("node %s: reclaimed %s from lost node %s", self.node_id, parts[1], owner)
        return Exported(pid, parts[1], namespace, 0, (), peer.to_json())

    def _answered(self, notice: HandoverNotice) -> None:
        claim = self._claims.get(notice.token)
        record = notice.record
        sid = str(record[1]) if isinstance(record, list) and len(record) > 1 else None
        if claim is not None and not claim.answered.is_set():
            if sid is not None:
                self._holds[sid] = _Hold()  # what the old node forwards waits for it
            claim.record = record
            claim.answered.set()
        elif sid is not None and self._nursery is not None:
            # Too late: the client was made a new session. The person is gone.
            self._nursery.start_soon(self._abandon, sid)

    async def _abandon(self, sid: str) -> None:
        result = await self._change("LEAVE", (sid, ""))
        if result is not None:
            await self._apply(wire.from_script(result))

    # -- the owner --------------------------------------------------------------------

    async def _serve_claim(self, claim: ClaimNotice) -> None:
        """Hand ``claim``'s record over if it is held here, else answer null."""

        def hand_over(exported: Exported) -> Callable[[object], None] | None:
            try:
                self._publish.send_nowait(HandoverNotice(claim.claimant, claim.token,
                                                         exported.to_json()))
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            return self._moved_out(exported, claim.claimant)

        handed = False
        if self._exporter is not None:
            handed = await self._exporter(claim.pid, claim.namespace, hand_over)
        if not handed:
            await self._publish.send(HandoverNotice(claim.claimant, claim.token, None))

    def _moved_out(self, exported: Exported, to: str) -> Callable[[object], None]:
        """``exported`` has gone to node ``to``: forward what still comes here for it."""
        sid = exported.sid
        self._sockets.pop(sid, None)
        self._queued_at.pop(sid, None)
        self._moved.pop(sid, None)
        self._moved[sid] = to
        if len(self._moved) > MOVED_REMEMBERED:
            del self._moved[next(iter(self._moved))]
        call = exported.state.get("call") if isinstance(exported.state, dict) else None
        if call and call[1] not in self._sockets:
            self._close_room(call[0])  # nobody here is in it any more

        def forward(message: object) -> None:
            notice: PersonNotice | None = None
            if type(message) is Deliver:
                notice = DeliverNotice(sid, to, message.room_id, message.event,
                                       message.json())
            elif isinstance(message, Fence):
                notice = FenceNotice(sid, to, message.room_id)
            elif isinstance(message, RoomEnded):
                notice = EndNotice(sid, to, message.room_id)
            if notice is not None:
                self._forward(notice, to)

        return forward

    def _forward(self, notice: PersonNotice, to: str) -> None:
        try:
            self._publish.send_nowait(ForwardedNotice(
                notice.sid, to, wire.encode(attrs.evolve(notice, node=to))))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning("node %s: publisher full: a notice for %s not forwarded",
                        self.node_id, to)

    # -- the new owner ----------------------------------------------------------------

    def node_of(self, socket: Socket) -> str:
        return socket.node if type(socket) is RemoteSocket else self.node_id

    def rejoin(self, socket: Socket, room_id: str | None, partner: str, partner_node: str
               ) -> tuple[trio.MemorySendChannel[RoomMessage] | None, Socket | None]:
        """See :class:`~liveloop.peer.Relocation`."""
        sid = socket.sid
        self._moved.pop(sid, None)
        self._sockets[sid] = socket
        hold = self._holds.get(sid)
        handed_over = hold is not None  # else reclaimed: nobody forwards, no fence comes
        if hold is None:
            hold = self._holds[sid] = _Hold()
        hold.socket = socket
        answer: tuple[trio.MemorySendChannel[RoomMessage] | None, Socket | None] = (None, None)
        if room_id is not None:
            room = self._open_room(room_id)
            partner_socket: Socket | None = None
            if partner_node == self.node_id:
                partner_socket = self._sockets.get(partner)
            if partner_socket is None:
                partner_socket = RemoteSocket(partner, partner_node, self._publish)
            if room is not None:
                answer = (room.send, partner_socket)
                hold.fenced = handed_over
                hold.until = trio.current_time() + self._settings.node_timeout
        early, hold.early = hold.early, []
        for notice, forwarded in early:
            if not self._hand(notice, forwarded):
                self._post_notice(notice)
        if not hold.fenced:
            self._holds.pop(sid, None)
        return answer

    def _hand(self, notice: PersonNotice, forwarded: bool = False) -> bool:
        """Take ``notice`` if it concerns a hand-over (held, forwarded, a fence or a
        move); False if the node applies it as usual."""
        sid = notice.sid
        hold = self._holds.get(sid)
        if hold is not None:
            if hold.socket is None:
                if len(hold.early) < HOLD_LIMIT:
                    hold.early.append((notice, forwarded))
                else:
                    log.warning("node %s: early notices for %s beyond %d: dropped",
                                self.node_id, sid, HOLD_LIMIT)
                return True
            if isinstance(notice, FenceNotice):
                self._release(sid)
                return True
            if hold.fenced and not forwarded:
                hold.held.append(notice)
                if len(hold.held) >= HOLD_LIMIT:
                    log.warning("node %s: hold for %s full; released", self.node_id, sid)
                    self._release(sid)
                return True
            return False
        to = self._moved.get(sid)
        if to is not None and sid not in self._sockets:
            self._forward(notice, to)
            return True
        if isinstance(notice, FenceNotice):
            return True  # nothing held: nothing to release
        if isinstance(notice, LostNotice):
            socket = self._sockets.get(sid)
            if socket is not None:
                socket.post(PartnerMoved(notice.room_id, HeldSocket(
                    notice.who, self._settings.recovery_packets)))
            return True
        if isinstance(notice, MovedNotice):
            socket = self._sockets.get(sid)
            if socket is not None:
                # Through the new node's channel even when that is this node: what comes
                # that way waits there for the fence (see the module docstring).
                socket.post(PartnerMoved(notice.room_id, RemoteSocket(
                    notice.who, notice.to, self._publish)))
            return True
        return False

    def _release(self, sid: str) -> None:
        hold = self._holds.pop(sid, None)
        if hold is not None:
            for notice in hold.held:
                self._post_notice(notice)

    def _release_expired(self) -> None:
        """Holds whose fence did not come within ``node_timeout`` (the partner left,
        or a node is gone) are released."""
        now = trio.current_time()
        for sid in [sid for sid, hold in self._holds.items()
                    if hold.socket is not None and hold.until <= now]:
            self._release(sid)


def _redis_errors() -> tuple[type[Exception], ...]:
    import coredis.exceptions

    return (coredis.exceptions.RedisError, OSError, trio.TooSlowError)


class ClusterRecoveryStore(MemoryStore):
    """Records in this process, claimed from other nodes through ``node``."""

    __slots__ = ("_node",)

    def __init__(self, settings: Settings, node: HandoverMixin) -> None:
        super().__init__(settings)
        self._node = node

    def new_pid(self, sid: str) -> str:
        """``<node>.<sid>.<random>``: where to claim it first, and whose it is (the
        random part is what makes it private)."""
        return f"{self._node.node_id}.{sid}.{new_pid()}"

    async def claim_elsewhere(self, pid: str, namespace: str) -> Exported | None:
        return await self._node.claim(pid, namespace)

    def serve(self, export: Exporter) -> None:
        self._node._exporter = export
