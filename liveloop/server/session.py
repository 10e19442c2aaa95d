"""The Engine.IO session: the actor that owns one client connection.

One :class:`EngineSession` per Engine.IO ``sid``. Its task (:meth:`EngineSession.run`)
is the only one that calls the application (:class:`SessionApp`); transports hand it what
the client sent through the bounded *mailbox*, and take what it queued from the bounded
*outbox*::

    transport reader --deliver()--> mailbox --> session task --> SessionApp
    other actors -----post()------>    |                            |
                                                                    v
    transport writer <------------------------------ outbox <-- send_*()

Bounds, and what happens when they are full:

- mailbox: ``mailbox_size`` slots for posts plus a few credits for client input.
  :meth:`deliver` (client input) waits for a credit: a fast client is slowed, nobody
  else is. :meth:`post` (other actors) never waits: if the posts overflow, the session
  is closed with reason ``"mailbox overflow"``: it is not keeping up, and an actor that
  relays to it must never stall for it.
- outbox: ``outbox_size`` packets and ``outbox_bytes`` bytes (characters of a text
  packet, bytes of a binary one). :meth:`send_packets` never waits: a client that does
  not read what is sent to it is closed with reason ``"outbox overflow"``, so it costs
  no more than that bound and never slows the sender. Transports take from the outbox
  through :meth:`EngineSession.take` (or hand what they received to
  :meth:`EngineSession.taken`), which keeps the byte count.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from typing import Protocol

import attrs
import trio

from ..config import Settings
from .timers import Timers

log = logging.getLogger(__name__)

OutFrame = str | bytes
"""An encoded Engine.IO packet: ``str`` is a text packet with its type digit, ``bytes``
a binary message."""

_CLIENT_CREDITS = 8
DISCONNECT_GRACE = 10.0
"""Seconds the app's disconnect handling may take at close."""
FLUSH_GRACE = 1.0
"""Seconds a closing WebSocket's writer has to send what was queued."""
_BURST = 64


def take_all(outbox: trio.MemoryReceiveChannel[OutFrame] | None,
             frames: list[OutFrame] | None = None) -> list[OutFrame]:
    """Everything ``outbox`` holds now, without waiting, appended to ``frames``."""
    taken: list[OutFrame] = [] if frames is None else frames
    if outbox is not None:
        try:
            while True:
                taken.append(outbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            pass
    return taken


class DirectWriter(Protocol):
    """A transport that the session task writes to itself, at each pause (see
    :meth:`EngineSession.attach`), rather than through a writer task."""

    @property
    def idle(self) -> bool:
        """Whether :meth:`write_now` would hand its bytes straight to the kernel. When
        not, the session leaves its packets in the outbox, and the transport takes
        them from there once it can."""

    def write_now(self, frames: Sequence[OutFrame]) -> None:
        """Send these packets, in order, without waiting."""


class SessionApp(Protocol):
    """What runs on top of an Engine.IO session (Socket.IO, or the raw echo)."""

    async def on_open(self, session: EngineSession) -> None:
        """The session exists and its task runs; called first."""

    async def on_messages(self, batch: Sequence[str | bytes]) -> None:
        """The MESSAGE packets' data that arrived together (one WebSocket frame, or one
        polling body), in order. The app may refuse a batch whole by closing the
        session before acting on any of it."""

    async def on_post(self, message: object) -> None:
        """A message another actor gave to :meth:`EngineSession.post`."""

    async def on_close(self, reason: str) -> None:
        """The session is closed; called once, last, shielded from cancellation."""


@attrs.frozen
class _Incoming:
    messages: Sequence[str | bytes]
    then_close: bool


class _Wake:
    """The timer actor, or a task that queued packets, asks the session task to look."""


_WAKE = _Wake()


class Transport(enum.Enum):
    """Which transport carries a session, as one state machine::

        POLLING --WebSocket with the sid accepted--> PROBING --2probe/3probe--> PAUSED
           ^                                            |                        |
           +------- probe failed, timed out, or its WebSocket closed -----------+
                                                                                 |
        WEBSOCKET <-------------------------------- 5 (upgrade) ----------------+

    A session that starts on a WebSocket is WEBSOCKET from the start; WEBSOCKET is final.
    """

    POLLING = "polling"
    PROBING = "probing"
    """A WebSocket for this session is probing; polling goes on, and a second WebSocket
    is refused."""
    PAUSED = "paused"
    """The probe was answered: polling is paused (a GET answers NOOP at once) until the
    client's upgrade packet."""
    WEBSOCKET = "websocket"


class SessionClosed(Exception):
    """The session is closed; nothing more can be delivered to it."""


class EngineSession:
    """One Engine.IO connection. See the module docstring for its channels."""

    # Thousands live at once: slots instead of a dict each (about 1.2 KiB less apiece).
    __slots__ = (
        "__weakref__",  # the timer actor holds sessions weakly
        "_credits",
        "_deadline",
        "_deadline_reason",
        "_direct",
        "_mailbox",
        "_mailbox_send",
        "_next_ping",
        "_outbox_bytes",
        "_outbox_bytes_limit",
        "_outbox_limit",
        "_outbox_send",
        "_pong_due",
        "_posted",
        "_scheduled",
        "_scope",
        "_sleeping",
        "_timers_actor",
        "_transport_scopes",
        "_woken",
        "app",
        "close_reason",
        "closed",
        "closed_event",
        "leftover",
        "outbox",
        "poll_answer",
        "polling_get",
        "polling_post",
        "settings",
        "sid",
        "state",
        "upgraded",
    )

    def __init__(self, sid: str, settings: Settings, app: SessionApp, transport: Transport,
                 timers: Timers) -> None:
        self.sid = sid
        self.settings = settings
        self.app = app
        self.state = transport
        """The transport state machine (:class:`Transport`); the Engine.IO server moves it."""
        self.upgraded = trio.Event()
        """Set when :attr:`state` becomes WEBSOCKET by an upgrade."""
        self.closed = False
        self.closed_event = trio.Event()
        self.close_reason: str | None = None
        self._outbox_send, self.outbox = trio.open_memory_channel[OutFrame](
            settings.outbox_size
        )
        self._outbox_limit = settings.outbox_size
        self._outbox_bytes_limit = settings.outbox_bytes
        self._outbox_bytes = 0
        """What the outbox holds, in characters of text and bytes of binary packets."""
        # Posts, client credits, and one slot for the wake-up (_WAKE).
        self._mailbox_send, self._mailbox = trio.open_memory_channel[
            object](settings.mailbox_size + _CLIENT_CREDITS + 1)
        self._posted = 0
        self._credits = trio.Semaphore(_CLIENT_CREDITS)
        self._next_ping = trio.current_time() + settings.ping_interval  # from the handshake on,
        # not from when this task starts (late on a loaded or guest loop)
        self._pong_due = math.inf
        self._deadline = math.inf
        self._deadline_reason = ""
        self._timers_actor = timers
        self._scheduled = math.inf
        """The earliest time this session has asked the timer actor for."""
        self._woken = False
        """A _WAKE is in the mailbox."""
        self._sleeping = False
        """The session task is waiting on an empty mailbox."""
        self._transport_scopes: tuple[trio.CancelScope, trio.CancelScope] | None = None
        self._direct: DirectWriter | None = None
        self._scope = trio.CancelScope()
        self.polling_get: trio.CancelScope | None = None
        """The cancel scope of the GET request that waits on the outbox, if any."""
        self.polling_post = False
        self.poll_answer: str | None = None
        """What a GET released by :meth:`release_poll` answers when it has nothing."""
        self.leftover: list[object] = []
        """Posts still in the mailbox when the session closed, in order, for ``on_close``
        (a recoverable socket hands them on to its away task)."""

    @property
    def transport(self) -> str:
        """``"polling"`` or ``"websocket"``: the transport that carries the session now."""
        return "websocket" if self.state is Transport.WEBSOCKET else "polling"

    # -- called by transports and other actors (any task, never blocking) ----------

    def send_packets(self, frames: Sequence[OutFrame]) -> None:
        """Queue encoded packets for the client, all or none.

        Never waits: if the outbox would exceed its bound, the session is closed
        (``"outbox overflow"``) and nothing is queued. After close it does nothing.
        """
        if self.closed:
            return
        used = self._outbox_send.statistics().current_buffer_used
        size = self._outbox_bytes + sum(map(len, frames))
        if used + len(frames) > self._outbox_limit or size > self._outbox_bytes_limit:
            self.close("outbox overflow")
            return
        for frame in frames:
            self._outbox_send.send_nowait(frame)
        self._outbox_bytes = size
        if self._sleeping and self._direct is not None:
            self.wake()  # from another task: the session task writes them

    def send_frame(self, frame: OutFrame) -> None:
        """:meth:`send_packets` for a single packet, without building a list."""
        if self.closed:
            return
        size = self._outbox_bytes + len(frame)
        if size > self._outbox_bytes_limit:
            self.close("outbox overflow")
            return
        try:
            self._outbox_send.send_nowait(frame)
        except trio.WouldBlock:
            self.close("outbox overflow")
            return
        self._outbox_bytes = size
        if self._sleeping and self._direct is not None:
            self.wake()  # from another task: the session task writes it

    def take(self, frames: list[OutFrame] | None = None) -> list[OutFrame]:
        """Everything the outbox holds now, without waiting, appended to ``frames`` (what
        the caller received from :attr:`outbox` itself, or None); counted out of the
        outbox's bytes."""
        taken = take_all(self.outbox, frames)
        self.taken(taken)
        return taken

    def taken(self, frames: Sequence[OutFrame]) -> None:
        """A transport received these from :attr:`outbox`: they no longer count."""
        if frames:
            self._outbox_bytes -= sum(map(len, frames))

    def post(self, message: object) -> None:
        """Hand ``message`` to the app's ``on_post`` in the session task; never waits.

        Dropped if the session is closed; closes the session if its mailbox is full.
        """
        if self.closed:
            return
        if self._posted >= self.settings.mailbox_size:
            self.close("mailbox overflow")
            return
        self._posted += 1
        # As it is: what is neither _Incoming nor _WAKE in the mailbox is a post.
        self._mailbox_send.send_nowait(message)

    async def deliver(self, messages: Sequence[str | bytes], *, then_close: bool = False
                      ) -> None:
        """Hand the client's MESSAGE packets to the session task, in order; with
        ``then_close`` the session closes (``"transport close"``) once they are handled.

        Waits while this client's earlier input is still unprocessed (backpressure on
        this client only). Raises :class:`SessionClosed` if the session is closed.
        """
        if self.closed:
            raise SessionClosed
        try:
            self._credits.acquire_nowait()
        except trio.WouldBlock:
            await self._credits.acquire()
        if self.closed:  # close() hands out credits so that no one waits for ever
            raise SessionClosed
        try:
            self._mailbox_send.send_nowait(_Incoming(messages, then_close))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._credits.release()
            raise SessionClosed from None

    def pong(self) -> None:
        """The client answered a ping: the next one is due ``ping_interval`` from now."""
        if self._pong_due == math.inf:
            return  # a pong nobody asked for changes nothing
        self._pong_due = math.inf
        self._next_ping = trio.current_time() + self.settings.ping_interval
        self._schedule()

    def wake(self) -> None:
        """Have the session task look at its timers and outbox soon; never waits."""
        if not self._woken and not self.closed:
            self._woken = True
            self._mailbox_send.send_nowait(_WAKE)

    def release_poll(self, answer: str) -> None:
        """End the pending GET, if any, now; with nothing queued it answers ``answer``
        (a packet, or ``"400"`` for an error)."""
        if self.polling_get is not None:
            self.poll_answer = answer
            self.polling_get.cancel()

    def close(self, reason: str) -> None:
        """Close the session now; idempotent.

        The session task then tells the app (``on_close``) and ends; the outbox is
        closed after what was already queued, so transports flush and stop.
        """
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.closed_event.set()
        for _ in range(_CLIENT_CREDITS):
            self._credits.release()  # wakes transports waiting in deliver()
        self._outbox_send.close()
        self._scope.cancel()
        self._stop_transport()
        self._direct = None  # the transport finishes on its own now

    # -- the actor ------------------------------------------------------------------

    def set_deadline(self, when: float, reason: str) -> None:
        """Close the session with ``reason`` at ``when`` (Trio time; ``inf`` clears it).
        Call from the session task (the app's ``on_open`` and handlers)."""
        self._deadline, self._deadline_reason = when, reason
        self._schedule()

    def attach(self, reading: trio.CancelScope, flushing: trio.CancelScope,
               direct: DirectWriter | None = None) -> None:
        """A WebSocket serves this session: on close, stop ``reading`` at once and give
        ``flushing`` (the writer) ``FLUSH_GRACE`` seconds to send what is queued.

        With ``direct``, this task writes to it whatever the outbox holds each time it
        has nothing left to handle: packets an event produces leave in one write, with
        no task switch on the way."""
        self._transport_scopes = (reading, flushing)
        if not self.closed:
            self._direct = direct
        else:
            self._stop_transport()

    def _stop_transport(self) -> None:
        if self._transport_scopes is not None:
            reading, flushing = self._transport_scopes
            reading.cancel()
            flushing.deadline = min(flushing.deadline, trio.current_time() + FLUSH_GRACE)

    async def run(self) -> None:
        """Serve the session until it is closed; then tell the app, once.

        One task does it all: the app's calls, the heartbeat (ping every
        ``ping_interval``, close if no pong within ``ping_timeout``) and the app's
        deadline, so that an idle connection costs one task here.
        """
        try:
            with self._scope:
                self._schedule()
                await self.app.on_open(self)
                await self._serve()
        except Exception:
            log.exception("session crashed; closing it",
                          extra={"sid": self.sid, "reason": "server error"})
            self.close("server error")
        finally:
            self.close(self.close_reason or "transport close")
            self.leftover = self._unhandled_posts()
            self._mailbox.close()
            with trio.CancelScope(shield=True) as shield:
                shield.deadline = trio.current_time() + DISCONNECT_GRACE
                try:
                    await self.app.on_close(self.close_reason or "transport close")
                except Exception:
                    log.exception("on_close failed", extra={"sid": self.sid})

    def _unhandled_posts(self) -> list[object]:
        posts: list[object] = []
        while True:
            try:
                item = self._mailbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return posts
            if item is not _WAKE and type(item) is not _Incoming:
                posts.append(item)

    def _wake_at(self) -> float:
        return min(self._next_ping, self._pong_due, self._deadline)

    def _schedule(self) -> None:
        """Ask the timer actor for a wake-up at the next timer, unless an earlier one is
        asked for already (then that wake-up asks again, for what is left)."""
        when = self._wake_at()
        if when < self._scheduled and not self.closed:
            self._scheduled = when
            self._timers_actor.schedule(when, self)

    async def _serve(self) -> None:
        mailbox = self._mailbox
        handled = 0
        while True:
            try:
                item = mailbox.receive_nowait()
            except trio.WouldBlock:
                if self._direct is not None:
                    self._write_direct(self._direct)
                self._sleeping = True
                item = await mailbox.receive()
                self._sleeping = False
                handled = 0
            else:
                handled += 1
                if handled % _BURST == 0:
                    # A busy connection still lets others run, and its timers fire.
                    if self._direct is not None:
                        self._write_direct(self._direct)
                    await trio.lowlevel.checkpoint()
                    self._timers()
            if item is _WAKE:
                self._woken = False
                self._timers()
                continue
            if type(item) is _Incoming:
                self._credits.release()
                if item.messages:
                    await self.app.on_messages(item.messages)
                    if self.closed:
                        return
                if item.then_close:
                    # The client closed: a GET still waiting ends with a NOOP.
                    self.release_poll("6")
                    self.close("transport close")
                    return
            else:
                self._posted -= 1
                await self.app.on_post(item)

    def _write_direct(self, direct: DirectWriter) -> None:
        if not direct.idle:
            return  # the transport takes them from the outbox when it can
        frames = self.take()
        if frames:
            direct.write_now(frames)

    def _timers(self) -> None:
        now = trio.current_time()
        if now >= self._scheduled:
            self._scheduled = math.inf  # that wake-up has come
        self._act_on_timers(now)
        self._schedule()

    def expire_overdue(self) -> bool:
        """Close the session now if its pong or the app's deadline has passed though
        its wake-up has not come yet (it comes late on a loaded or guest loop); whether
        it did. A request that arrives after a deadline finds the session gone."""
        if self.closed:
            return False
        now = trio.current_time()
        if now >= self._deadline or now >= self._pong_deadline():
            self._act_on_timers(now)
            return self.closed
        return False

    def _pong_deadline(self) -> float:
        """When the pong is due: ``ping_timeout`` after the ping was due, sent or not."""
        return min(self._pong_due, self._next_ping + self.settings.ping_timeout)

    def _act_on_timers(self, now: float) -> None:
        if now >= self._deadline:
            self.close(self._deadline_reason)
        elif now >= self._pong_deadline():  # a ping still unsent is that late: no pong
            self.close("ping timeout")
        elif now >= self._next_ping:
            # from when the ping was due, so that a late wake-up does not push the
            # close past pingInterval + pingTimeout (clients count that way)
            self._pong_due = self._next_ping + self.settings.ping_timeout
            self._next_ping = math.inf
            self.send_frame("2")
