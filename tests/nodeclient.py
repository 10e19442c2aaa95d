"""Drive real Socket.IO clients from pytest-trio tests.

``NodeClient`` runs a client in a child process and talks to it with JSON
lines (protocol documented at the top of ``tests/js/driver.mjs``):

* ``kind="node"``   -> ``node tests/js/driver.mjs`` (the official npm
  ``socket.io-client``, pinned in ``tests/js/package.json``; run
  ``npm ci --prefix tests/js`` once),
* ``kind="python"`` -> ``tests/py_client_driver.py`` (python-socketio's
  asyncio ``AsyncClient``, kept out of the Trio process on purpose).

Example::

    async with NodeClient() as client:
        info = await client.connect("http://127.0.0.1:3000", transports=["websocket"])
        await client.emit("join", {"room": "a"})
        with trio.fail_after(5):
            ev = await client.next("event", event="joined")
        assert await client.emit("ping", 1, ack=True) == [1]

Every output line of the child is a ``dict``; command replies are routed to the
awaiting call, everything else (``connect``, ``upgrade``, ``connect_error``,
``disconnect``, ``event``, ``ping``, ``error``) is queued for :meth:`NodeClient.next`.
Binary values (``bytes``) are transparently carried as ``{"$bin": base64}``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import trio

from .binjson import decode, encode

__all__ = ["ClientDied", "ConnectFailed", "DriverError", "NodeClient", "decode", "encode"]

TESTS_DIR = Path(__file__).resolve().parent
JS_DIR = TESTS_DIR / "js"
NODE_DRIVER = JS_DIR / "driver.mjs"
PY_DRIVER = TESTS_DIR / "py_client_driver.py"

Kind = Literal["node", "python"]


class DriverError(Exception):
    """A command was rejected by the driver (``{"ok": false}`` reply)."""

    def __init__(self, reply: Mapping[str, Any]) -> None:
        super().__init__(reply.get("error") or reply.get("message") or repr(reply))
        self.reply = dict(reply)


class ConnectFailed(DriverError):
    """``connect`` ended with ``connect_error``; ``message``/``data`` come from the server."""

    @property
    def message(self) -> str:
        return str(self.reply.get("message"))

    @property
    def data(self) -> Any:
        return self.reply.get("data")


class ClientDied(Exception):
    """The driver process exited (or closed stdout) while we were waiting on it."""


def _camel(key: str) -> str:
    """``force_new`` -> ``forceNew`` so Python-style keyword options work too."""
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


class NodeClient:
    """A remote-controlled Socket.IO client process (Node or Python).

    Use as an async context manager; the process is killed on exit.

    Args:
        kind: ``"node"`` (npm socket.io-client) or ``"python"`` (python-socketio).
        buffer: capacity of the channel between the stdout reader and :meth:`next`.
        env: extra environment variables for the child (e.g. ``{"DEBUG": "socket.io-client:*"}``;
            the child's stderr is inherited, so debug output shows in pytest's captured stderr).
        default_timeout: ack timeout (seconds) used by :meth:`emit` when no ``ack_timeout``.
    """

    def __init__(
        self,
        kind: Kind = "node",
        *,
        buffer: int = 1000,
        env: Mapping[str, str] | None = None,
        default_timeout: float = 5.0,
    ) -> None:
        if kind not in ("node", "python"):
            raise ValueError(f"kind must be 'node' or 'python', not {kind!r}")
        self.kind: Kind = kind
        self.default_timeout = default_timeout
        self.ready: dict[str, Any] = {}
        self._buffer = buffer
        self._env = dict(env or {})
        self._ids = itertools.count(1)
        self._replies: dict[int, tuple[trio.Event, list[dict[str, Any]]]] = {}
        self._pending: deque[dict[str, Any]] = deque()
        self._send_lock = trio.Lock()
        self._proc: trio.Process | None = None
        self._lifecycle_cm: Any = None
        self._events_send: trio.MemorySendChannel[dict[str, Any]] | None = None
        self._events_recv: trio.MemoryReceiveChannel[dict[str, Any]] | None = None
        self._dead = trio.Event()
        self._exit_note = ""

    # ------------------------------------------------------------------ lifecycle

    def _command(self) -> list[str]:
        if self.kind == "node":
            node = shutil.which("node")
            if node is None:
                raise RuntimeError("node is not on PATH")
            if not (JS_DIR / "node_modules" / "socket.io-client").is_dir():
                raise RuntimeError(f"run `npm ci --prefix {JS_DIR}` first")
            return [node, str(NODE_DRIVER)]
        return [sys.executable, "-u", str(PY_DRIVER)]

    async def __aenter__(self) -> NodeClient:
        self._lifecycle_cm = self._lifecycle()
        client: NodeClient = await self._lifecycle_cm.__aenter__()
        return client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            suppress: bool | None = await self._lifecycle_cm.__aexit__(exc_type, exc, tb)
            return suppress
        except BaseExceptionGroup as group:
            # Our internal nursery wraps whatever the test body raised; hand a
            # lone exception (AssertionError, TooSlowError, ...) back unwrapped.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    @contextlib.asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[NodeClient]:
        """Start the driver + stdout reader; on exit ask it to quit, then kill it."""
        send, recv = trio.open_memory_channel[dict[str, Any]](self._buffer)
        self._events_send, self._events_recv = send, recv
        async with trio.open_nursery() as nursery:
            proc = await trio.lowlevel.open_process(
                self._command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,  # inherited: shows up in pytest's captured output
                env={**os.environ, **self._env},
                cwd=str(TESTS_DIR.parent),
            )
            self._proc = proc
            try:
                nursery.start_soon(self._reader)
                with trio.fail_after(20):
                    self.ready = await self.next("ready")
                yield self
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop_process(proc)
                nursery.cancel_scope.cancel()

    async def _stop_process(self, proc: trio.Process) -> None:
        if proc.returncode is None:
            # polite first: "exit" lets the client send its disconnect packets
            with trio.move_on_after(1):
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError
                ):
                    await self._write({"id": 0, "cmd": "exit"})
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                await stream.aclose()

    async def _reader(self) -> None:
        """Parse stdout lines; route replies to waiters and everything else to the channel."""
        assert self._proc is not None and self._proc.stdout is not None
        assert self._events_send is not None
        buf = b""
        try:
            async with self._events_send:
                while True:
                    chunk = await self._proc.stdout.receive_some(65536)
                    if not chunk:
                        break
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        if not raw.strip():
                            continue
                        try:
                            msg = json.loads(raw)
                        except ValueError:
                            msg = {"type": "error", "message": f"unparsable line: {raw!r}"}
                        if msg.get("type") == "reply" and msg.get("id") in self._replies:
                            event, slot = self._replies[msg["id"]]
                            slot.append(msg)
                            event.set()
                        else:
                            await self._events_send.send(msg)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            code = self._proc.returncode if self._proc else None
            self._exit_note = f"{self.kind} driver closed its stdout (returncode={code})"
            self._dead.set()
            for event, _slot in self._replies.values():
                event.set()

    # ------------------------------------------------------------------ low level

    async def _write(self, obj: Mapping[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        async with self._send_lock:
            await self._proc.stdin.send_all(data)

    async def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send one raw command and return its reply dict (even when ``ok`` is false).

        Mostly for internal use; ``fields`` are sent as-is (already JSON-safe).
        """
        if self._dead.is_set():
            raise ClientDied(self._exit_note)
        cmd_id = next(self._ids)
        event, slot = trio.Event(), list[dict[str, Any]]()
        self._replies[cmd_id] = (event, slot)
        try:
            await self._write({"id": cmd_id, "cmd": cmd, **fields})
            await event.wait()
        finally:
            del self._replies[cmd_id]
        if not slot:
            raise ClientDied(self._exit_note)
        return slot[0]

    async def _checked(self, cmd: str, **fields: Any) -> dict[str, Any]:
        reply = await self.request(cmd, **fields)
        if not reply.get("ok"):
            raise DriverError(reply)
        return reply

    # ------------------------------------------------------------------ public API

    async def connect(
        self,
        url: str,
        *,
        name: str = "main",
        wait: bool = True,
        check: bool = True,
        report_pings: bool = False,
        **opts: Any,
    ) -> dict[str, Any]:
        """Open a socket (``io(url, opts)``) under ``name``.

        ``opts`` are socket.io-client options (``transports``, ``auth``, ``path``,
        ``query``, ``extraHeaders``, ``timeout`` ...; snake_case is camelCased).
        The driver defaults to ``forceNew=True, reconnection=False``. The namespace
        is the URL path (``http://host:3000/custom``).

        With ``wait`` the call returns when the socket connected
        (``{"ok": True, "sid", "engine_sid", "transport"}``) or failed; a failure
        raises :class:`ConnectFailed` unless ``check=False`` (then the reply with
        ``ok=False, message, data`` is returned). ``report_pings`` makes the
        driver emit ``{"type": "ping"}`` lines for Engine.IO pings.
        """
        reply = await self.request(
            "connect",
            url=url,
            name=name,
            wait=wait,
            report_pings=report_pings,
            opts=encode({_camel(k): v for k, v in opts.items()}),
        )
        if check and not reply.get("ok"):
            raise ConnectFailed(reply)
        return reply

    async def emit(
        self,
        event: str,
        *args: Any,
        ack: bool = False,
        socket: str = "main",
        ack_timeout: float | None = None,
    ) -> list[Any] | None:
        """Emit ``event`` with ``args`` (``bytes`` allowed anywhere).

        With ``ack=True`` waits for the server's acknowledgement and returns its
        argument list (decoded); raises :class:`DriverError` (``error="timeout"``)
        if none arrives within ``ack_timeout`` seconds (default ``default_timeout``).
        Without ack returns ``None`` once the client has accepted the emit.
        """
        fields: dict[str, Any] = {"socket": socket, "event": event, "args": encode(list(args))}
        if ack:
            t = self.default_timeout if ack_timeout is None else ack_timeout
            fields.update(ack=True, timeout=int(t * 1000))
        reply = await self._checked("emit", **fields)
        if not ack:
            return None
        result: list[Any] = decode(reply.get("ack") or [])
        return result

    async def ack_next(
        self,
        *args: Any,
        event: str | None = None,
        socket: str = "main",
        persistent: bool = False,
    ) -> None:
        """Auto-answer the next server->client event (``event`` or any) that asks for an ack.

        The event line then carries ``acked=[...args]``. ``persistent=True``
        answers every such event until the socket is replaced.
        """
        await self._checked(
            "ack-next", socket=socket, event=event, args=encode(list(args)), persistent=persistent
        )

    async def ack(self, ack_id: int, *args: Any, socket: str = "main") -> None:
        """Answer by hand a server->client ack announced by an event line's ``ack_id``."""
        await self._checked("ack", socket=socket, ack_id=ack_id, args=encode(list(args)))

    async def disconnect(self, socket: str = "main") -> None:
        """``socket.disconnect()``; a ``disconnect`` line follows.

        Its reason is ``"io client disconnect"`` (both drivers).
        """
        await self._checked("disconnect", socket=socket)

    async def stop_pongs(self, socket: str = "main") -> None:
        """Make the socket's Engine.IO layer stop answering pings (all else keeps working).

        The server should then close the session after ``pingInterval + pingTimeout``
        (reason ``"ping timeout"``). Both drivers patch their engine's packet sender.
        """
        await self._checked("stop-pongs", socket=socket)

    async def state(self, socket: str = "main") -> dict[str, Any]:
        """Current ``connected``/``sid``/``engine_sid``/``transport`` of a socket."""
        return await self._checked("state", socket=socket)

    async def next(
        self,
        type_: str | None = None,
        event: str | None = None,
        socket: str | None = None,
    ) -> dict[str, Any]:
        """Return the next output line matching all given filters.

        Lines that don't match are kept (in order) for later calls, so tests can
        wait for things in any order. ``args``/``data`` are decoded (``bytes``).
        No timeout of its own: wrap in ``trio.fail_after``. Raises
        :class:`ClientDied` if the process ends first.
        """

        def matches(msg: dict[str, Any]) -> bool:
            return (
                (type_ is None or msg.get("type") == type_)
                and (event is None or msg.get("event") == event)
                and (socket is None or msg.get("socket") == socket)
            )

        for i, msg in enumerate(self._pending):
            if matches(msg):
                del self._pending[i]
                return self._decoded(msg)
        assert self._events_recv is not None
        while True:
            try:
                msg = await self._events_recv.receive()
            except trio.EndOfChannel:
                raise ClientDied(
                    f"{self._exit_note}; waiting for type={type_} event={event} socket={socket}; "
                    f"unconsumed: {list(self._pending)[-10:]}"
                ) from None
            if matches(msg):
                return self._decoded(msg)
            self._pending.append(msg)

    def drain(self) -> list[dict[str, Any]]:
        """Return (and forget) every line received so far but not yet consumed."""
        assert self._events_recv is not None
        while True:
            try:
                self._pending.append(self._events_recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        out = [self._decoded(m) for m in self._pending]
        self._pending.clear()
        return out

    @staticmethod
    def _decoded(msg: dict[str, Any]) -> dict[str, Any]:
        msg = dict(msg)
        for key in ("args", "data", "acked"):
            if key in msg:
                msg[key] = decode(msg[key])
        return msg

    @property
    def returncode(self) -> int | None:
        """Exit status of the driver process (``None`` while running)."""
        return None if self._proc is None else self._proc.returncode
