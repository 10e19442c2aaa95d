"""Per-request routing between ``liveloop serve --workers N`` processes.

Every worker accepts connections (its own ``SO_REUSEPORT`` listener on the shared port)
and reads each request head itself. An Engine.IO request that names a session (``sid``)
belongs to the worker that made the session: the sid's first character says which
(:func:`tag_sid`, :func:`owner_of`), so no lookup is needed. A request for another
worker's session is passed to it whole, connection and all: the socket's descriptor
and the bytes already read go over a Unix ``SOCK_SEQPACKET`` socket
(:class:`Handoff`), and the owner serves the request as if it had accepted the
connection itself, then reads the next request head on it and routes that one the same
way. Routing is therefore per request, not per connection: a kept-alive connection that
carries requests for sessions of different workers (a browser's, or a Node agent's
shared pool) moves to whichever worker owns its next request.

Each worker's inbox is one ``SOCK_SEQPACKET`` socket pair: the worker reads one end,
every other worker writes the other (each write is one whole message, so writers
never interleave). Its bound is the kernel's socket buffer: when full, the sending
worker waits (that connection alone waits), and nothing is dropped.

Handshakes (no sid yet) are spread over the workers in turn by whichever worker reads
them (:meth:`Handoff.route`): the kernel spreads connections, not sessions, and a few
kept-alive connections may carry many people's handshakes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from urllib.parse import parse_qsl, unquote

import attrs
import trio

log = logging.getLogger(__name__)

TAGS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
"""The base64url alphabet: worker ``i``'s sids start with ``TAGS[i]``."""
MAX_WORKERS = len(TAGS)

MAX_HANDOFF = 192 * 1024
"""The largest message on an inbox: a request head (16 KiB at most) plus what one or
two reads brought beyond it. The socket buffers are set above this."""


def tag_sid(sid: str, worker: int) -> str:
    """``sid`` with its first character replaced by ``worker``'s tag."""
    return TAGS[worker] + sid[1:]


NEW = -1
"""What :func:`owner_of` says of a handshake: a new session, for any worker."""


def owner_of(target: bytes, engine_paths: frozenset[str], workers: int) -> int | None:
    """The worker that owns the session a request target names (``/socket.io/?sid=…``);
    :data:`NEW` for an Engine.IO handshake (no sid); None for anything else (another
    path, a malformed sid): any worker may serve those."""
    path, _, query = target.partition(b"?")
    try:
        path_text = unquote(path.decode("ascii"))
    except UnicodeDecodeError:
        return None
    if path_text.rstrip("/") not in engine_paths:
        return None
    sid = None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name == "sid":
            sid = value  # the last one wins, as for the engine's own parsing
    if sid is None:
        return NEW
    owner = TAGS.find(sid[:1]) if sid else -1
    return owner if 0 <= owner < workers else None


def inbox_pair() -> tuple[socket.socket, socket.socket]:
    """A worker's inbox: (the end it reads, the end the others write)."""
    read, write = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (read, write):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * MAX_HANDOFF)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * MAX_HANDOFF)
        end.setblocking(False)
    return read, write


class Handoff:
    """One worker's end of the routing: passes connections to the other workers'
    inboxes and receives them from its own. ``inboxes[i]`` is worker ``i``'s writing
    end (None for this worker's own)."""

    def __init__(self, index: int, inbox: socket.socket,
                 inboxes: Sequence[socket.socket | None]) -> None:
        self.index = index
        self.workers = len(inboxes)
        self._inbox = inbox
        self._inboxes = inboxes
        self.passed = 0
        """Requests passed to another worker so far (for tests and benchmarks)."""
        self._turn = 0

    def route(self, target: bytes, engine_paths: frozenset[str]) -> int:
        """The worker that is to serve a request for ``target``: the session's owner;
        for a handshake, the workers in turn, starting with this one, so that new
        sessions are spread evenly even when few kept-alive connections carry them all
        (a pooling proxy in front, a Node agent); this worker for anything else."""
        owner = owner_of(target, engine_paths, self.workers)
        if owner is None:
            return self.index
        if owner == NEW:
            owner = (self.index + self._turn) % self.workers
            self._turn = (self._turn + 1) % self.workers
        return owner

    async def send(self, owner: int, connection: int, data: bytes) -> None:
        """Pass the socket ``connection`` (a descriptor, still open here: the caller
        closes it afterwards) and ``data``, the bytes read from it and not yet served, to
        ``owner``. Waits while the owner's inbox is full."""
        inbox = self._inboxes[owner]
        assert inbox is not None, "a worker does not pass to itself"
        if len(data) > MAX_HANDOFF:
            raise OSError(f"{len(data)} bytes to pass, more than {MAX_HANDOFF}")
        while True:
            try:
                socket.send_fds(inbox, [data], [connection])
            except BlockingIOError:
                await trio.lowlevel.wait_writable(inbox)
                continue
            self.passed += 1
            return

    async def receive(self) -> tuple[socket.socket, bytes] | None:
        """The next connection another worker passed here, and the bytes it had read;
        None once every other worker is gone (nothing can come any more)."""
        while True:
            await trio.lowlevel.wait_readable(self._inbox)
            try:
                data, fds, flags, _ = socket.recv_fds(self._inbox, MAX_HANDOFF, 1)
            except BlockingIOError:
                continue
            if not data and not fds:
                return None
            if fds and data and not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                return socket.socket(fileno=fds[0]), data
            for fd in fds:  # cannot happen between our own workers; never leak one
                socket.close(fd)
            log.error("worker %d: a malformed handoff (flags %#x), dropped", self.index, flags)


@attrs.frozen(eq=False)
class Worker:
    """What one of several worker processes is given by the parent."""

    handoff: Handoff
    listener: socket.socket
    """Its own listening socket, bound with ``SO_REUSEPORT`` to the shared address."""
    lifeline: int
    """The reading end of a pipe whose writing end only the parent holds: readable
    (end of file) once the parent is gone, however it went."""
