#!/usr/bin/env python3
"""Remote-controlled python-socketio ``AsyncClient``, speaking JSON lines.

This is the Python twin of ``tests/js/driver.mjs``: the same commands on stdin
and the same output lines on stdout (see that file for the full protocol), so
``tests/nodeclient.py`` can drive either client with one API
(``NodeClient(kind="python")``).

python-socketio is asyncio-only while our tests run on Trio; running it in its
own process keeps the two event loops apart and exercises the real network
stack exactly like the Node client does.

Differences from the Node driver, all inherent to python-socketio:

* One ``AsyncClient`` per named socket (like ``forceNew: true``); the namespace
  is taken from the URL path (``http://host:3000/custom`` -> ``/custom``).
* Engine.IO upgrades polling -> websocket *during* the handshake, before the
  Socket.IO CONNECT; the ``upgrade`` line is therefore printed right after the
  ``connect`` line and ``connect.transport`` is already ``"websocket"``.
* Disconnect reasons are mapped onto the JS names where an equivalent exists
  (``"io client disconnect"``, ``"io server disconnect"``, ``"transport error"``);
  the raw python-socketio reason is kept as ``py_reason``.
* Supported connect ``opts``: ``transports``, ``auth``, ``path``, ``query``,
  ``extraHeaders``, ``reconnection``, ``timeout`` (ms); others are ignored and
  listed in the reply as ``ignored_opts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import version as pkg_version
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import socketio
from socketio import packet

if TYPE_CHECKING:  # mypy reads this file as tests.py_client_driver
    from tests.binjson import decode, encode
else:  # the script runs with tests/ on sys.path
    from binjson import decode, encode

REASONS = {
    "client disconnect": "io client disconnect",
    "server disconnect": "io server disconnect",
    "transport error": "transport error",
}
SUPPORTED_OPTS = {
    "transports",
    "auth",
    "path",
    "query",
    "extraHeaders",
    "reconnection",
    "timeout",
    "forceNew",
}

_ack_ids = itertools.count(1)


def out(obj: dict[str, Any]) -> None:
    """Write one JSON line to stdout (the only thing ever written there)."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


@dataclass
class Rule:
    event: str | None
    args: list[Any]
    persistent: bool


@dataclass
class Entry:
    name: str
    namespace: str
    client: DriverClient
    rules: list[Rule] = field(default_factory=list)
    pending_acks: dict[int, asyncio.Future[list[Any]]] = field(default_factory=dict)
    last_connect_error: dict[str, Any] | None = None
    started_with_polling: bool = True
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    worker: asyncio.Task[None] | None = None


class DriverClient(socketio.AsyncClient):  # type: ignore[misc]
    """AsyncClient that reports every event and can answer server acks on demand.

    ``_handle_event`` is overridden (internal API of python-socketio 5.x) because
    the public catch-all handler cannot tell whether the server asked for an ack.
    """

    entry: Entry

    async def _handle_event(self, namespace: str | None, id: int | None, data: list[Any]) -> None:
        entry = self.entry
        event, args = data[0], data[1:]
        line: dict[str, Any] = {
            "type": "event",
            "socket": entry.name,
            "event": event,
            "args": encode(args),
            "ack_id": None,
            "acked": None,
        }
        if id is None:
            out(line)
            return
        rule = next((r for r in entry.rules if r.event is None or r.event == event), None)
        if rule is not None:
            if not rule.persistent:
                entry.rules.remove(rule)
            line["acked"] = rule.args
            out(line)
            resp = decode(rule.args)
        else:
            ack_id = next(_ack_ids)
            fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            entry.pending_acks[ack_id] = fut
            line["ack_id"] = ack_id
            out(line)
            resp = await fut
        await self._send_packet(
            self.packet_class(packet.ACK, namespace=namespace or "/", id=id, data=list(resp))
        )


class Driver:
    """Executes commands read from stdin."""

    def __init__(self) -> None:
        self.sockets: dict[str, Entry] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def entry(self, name: str | None) -> Entry:
        name = name or "main"
        if name not in self.sockets:
            raise KeyError(f"unknown socket {name!r}")
        return self.sockets[name]

    # ------------------------------------------------------------ commands

    async def cmd_connect(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        name = cmd.get("name") or "main"
        entry = self.sockets[name]
        opts = decode(cmd.get("opts") or {})
        parts = urlsplit(cmd["url"])
        namespace = parts.path if parts.path not in ("", "/") else "/"
        query = parse_qsl(parts.query)
        query += [(k, str(v)) for k, v in (opts.get("query") or {}).items()]
        url = urlunsplit((parts.scheme, parts.netloc, "", urlencode(query), ""))
        transports = opts.get("transports")
        client = entry.client
        client.reconnection = bool(opts.get("reconnection", False))
        entry.namespace = namespace
        entry.started_with_polling = transports is None or transports[0] == "polling"
        self._register_handlers(entry, report_pings=bool(cmd.get("report_pings")))
        ignored = sorted(set(opts) - SUPPORTED_OPTS)

        async def do_connect() -> dict[str, Any]:
            try:
                await client.connect(
                    url,
                    headers=opts.get("extraHeaders") or {},
                    auth=opts.get("auth"),
                    transports=transports,
                    namespaces=[namespace],
                    socketio_path=(opts.get("path") or "/socket.io").strip("/"),
                    wait_timeout=float(opts.get("timeout", 5000)) / 1000,
                )
            except Exception as exc:  # socketio.exceptions.ConnectionError and friends
                err = entry.last_connect_error or {"message": str(exc), "data": None}
                if entry.last_connect_error is None:
                    out({"type": "connect_error", "socket": name, **err})
                return {"ok": False, **err}
            return {"ok": True, **self._info(entry), "ignored_opts": ignored}

        if cmd.get("wait", True) is False:
            out(
                {
                    "type": "reply",
                    "id": cmd.get("id"),
                    "ok": True,
                    "pending": True,
                    "ignored_opts": ignored,
                }
            )
            await do_connect()
            return None
        return await do_connect()

    async def cmd_emit(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        entry = self.entry(cmd.get("socket"))
        args = tuple(decode(cmd.get("args") or []))
        if not cmd.get("ack"):
            await entry.client.emit(cmd["event"], args, namespace=entry.namespace)
            return {"ok": True}
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

        def callback(*resp: Any) -> None:
            if not fut.done():
                fut.set_result(list(resp))

        await entry.client.emit(cmd["event"], args, namespace=entry.namespace, callback=callback)

        async def wait_ack() -> None:
            try:
                resp = await asyncio.wait_for(fut, float(cmd.get("timeout", 5000)) / 1000)
            except TimeoutError:
                res = {"ok": False, "error": "timeout", "message": "operation has timed out"}
            else:
                res = {"ok": True, "ack": encode(resp)}
            out({"type": "reply", "id": cmd.get("id"), **res})

        self._spawn(wait_ack())
        return None

    async def cmd_ack_next(self, cmd: dict[str, Any]) -> dict[str, Any]:
        entry = self.entry(cmd.get("socket"))
        entry.rules.append(
            Rule(cmd.get("event"), cmd.get("args") or [], bool(cmd.get("persistent")))
        )
        return {"ok": True}

    async def cmd_ack(self, cmd: dict[str, Any]) -> dict[str, Any]:
        entry = self.entry(cmd.get("socket"))
        fut = entry.pending_acks.pop(int(cmd["ack_id"]), None)
        if fut is None:
            raise KeyError(f"no pending ack {cmd['ack_id']}")
        fut.set_result(decode(cmd.get("args") or []))
        return {"ok": True}

    async def cmd_disconnect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        entry = self.entry(cmd.get("socket"))
        await entry.client.disconnect()
        return {"ok": True}

    async def cmd_stop_pongs(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Stop answering the server's Engine.IO pings (heartbeat-timeout tests)."""
        entry = self.entry(cmd.get("socket"))
        eio = entry.client.eio
        send = eio._send_packet  # internal API of python-engineio 4.x

        async def send_packet(pkt: Any) -> None:
            if pkt.packet_type == 3:  # PONG
                return
            await send(pkt)

        eio._send_packet = send_packet
        return {"ok": True}

    async def cmd_state(self, cmd: dict[str, Any]) -> dict[str, Any]:
        entry = self.entry(cmd.get("socket"))
        return {"ok": True, "connected": entry.client.connected, **self._info(entry)}

    # ------------------------------------------------------------ helpers

    def _info(self, entry: Entry) -> dict[str, Any]:
        c = entry.client
        return {
            "sid": c.get_sid(entry.namespace),
            "engine_sid": c.eio.sid,
            "transport": c.transport() if c.eio.state == "connected" else None,
        }

    def _register_handlers(self, entry: Entry, report_pings: bool) -> None:
        c, ns, name = entry.client, entry.namespace, entry.name

        async def on_connect() -> None:
            info = self._info(entry)
            out({"type": "connect", "socket": name, **info})
            if entry.started_with_polling and info["transport"] == "websocket":
                out({"type": "upgrade", "socket": name, "transport": "websocket"})

        async def on_connect_error(data: Any = None) -> None:
            if isinstance(data, dict) and "message" in data:
                err = {"message": data["message"], "data": encode(data.get("data"))}
            else:
                err = {"message": str(data), "data": None}
            entry.last_connect_error = err
            out({"type": "connect_error", "socket": name, **err})

        async def on_disconnect(reason: str = "") -> None:
            out(
                {
                    "type": "disconnect",
                    "socket": name,
                    "reason": REASONS.get(reason, reason),
                    "py_reason": reason,
                    "description": None,
                }
            )

        c.on("connect", on_connect, namespace=ns)
        c.on("connect_error", on_connect_error, namespace=ns)
        c.on("disconnect", on_disconnect, namespace=ns)
        if report_pings:
            # engineio has no public ping hook; wrap its packet handler.
            eio = c.eio
            orig = eio._receive_packet

            async def receive_packet(pkt: Any) -> None:
                if pkt.packet_type == 2:  # PING
                    out({"type": "ping", "socket": name})
                await orig(pkt)

            eio._receive_packet = receive_packet

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def dispatch(self, cmd: dict[str, Any]) -> None:
        """Route a command: per-socket commands run in order on that socket's worker."""
        if cmd.get("cmd") == "connect":
            name = cmd.get("name") or "main"
            old = self.sockets.pop(name, None)
            if old is not None:
                if old.worker is not None:
                    old.worker.cancel()
                self._spawn(old.client.shutdown())
            client = DriverClient(reconnection=False)
            entry = Entry(name=name, namespace="/", client=client)
            client.entry = entry
            self.sockets[name] = entry
            entry.worker = asyncio.ensure_future(self._worker(entry))
        elif cmd.get("cmd") in ("state", "ack", "ack-next", "stop-pongs"):
            # never queued behind a pending connect/emit
            await self.run_command(cmd)
            return
        name = cmd.get("name") if cmd.get("cmd") == "connect" else cmd.get("socket")
        target = self.sockets.get(name or "main")
        if target is None:
            await self.run_command(cmd)  # produces the "unknown socket" error reply
            return
        target.queue.put_nowait(cmd)

    async def _worker(self, entry: Entry) -> None:
        while True:
            cmd = await entry.queue.get()
            await self.run_command(cmd)

    async def run_command(self, cmd: dict[str, Any]) -> None:
        handler = getattr(self, "cmd_" + str(cmd.get("cmd", "")).replace("-", "_"), None)
        if handler is None:
            out(
                {
                    "type": "reply",
                    "id": cmd.get("id"),
                    "ok": False,
                    "error": f"unknown cmd {cmd.get('cmd')!r}",
                }
            )
            return
        try:
            res = await handler(cmd)
        except Exception as exc:
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if res is not None:  # None: the handler replied (or will reply) itself
            out({"type": "reply", "id": cmd.get("id"), **res})

    async def shutdown(self) -> None:
        for entry in list(self.sockets.values()):
            if entry.worker is not None:
                entry.worker.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(entry.client.shutdown(), 2)
        self.sockets.clear()


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    driver = Driver()
    out(
        {
            "type": "ready",
            "pid": os.getpid(),
            "client_version": f"python-socketio {pkg_version('python-socketio')}",
        }
    )
    while True:
        raw = await reader.readline()
        if not raw:
            break
        if not raw.strip():
            continue
        try:
            cmd = json.loads(raw)
        except ValueError as exc:
            out({"type": "error", "message": f"bad JSON: {exc}"})
            continue
        if cmd.get("cmd") == "exit":
            out({"type": "reply", "id": cmd.get("id"), "ok": True})
            break
        # per-socket commands run in order; sockets run concurrently
        await driver.dispatch(cmd)
    await driver.shutdown()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
