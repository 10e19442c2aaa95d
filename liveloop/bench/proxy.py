"""A TCP proxy that cuts connections the way networks do (the recovery tests and the
``cuts`` bench scenario).

``CuttingProxy(port)`` forwards every connection made to it to ``127.0.0.1:port``.

- :meth:`CuttingProxy.cut` resets every current connection, both sides at once (RST,
  through ``SO_LINGER`` 0): the client and the server each see their connection die,
  and whatever was in flight is lost.
- :meth:`CuttingProxy.go_silent` keeps the connections open but forwards nothing more,
  either way (a dead Wi-Fi: nobody is told; heartbeats find out).
- While :attr:`CuttingProxy.refusing` is set, new connections are reset at once (the
  client's reconnection attempts fail until it is cleared).
- :meth:`CuttingProxy.hold` keeps what arrives, either way, until :meth:`CuttingProxy.resume`
  forwards it (a slow link, delayed as long as a test wants: nothing lost).
- :attr:`CuttingProxy.target` is the port new connections go to: changing it moves the
  client's next connection to another server (a balancer that moved it).

It runs in the caller's nursery (``url = await nursery.start(proxy.run)``).
"""

from __future__ import annotations

import contextlib
import socket
import struct

import trio


def _reset(stream: trio.SocketStream) -> None:
    """Close with an RST: the peer's next read fails (ECONNRESET), no orderly FIN."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


class _Link:
    __slots__ = ("client", "scope", "server", "silent")

    def __init__(self, client: trio.SocketStream, server: trio.SocketStream) -> None:
        self.client = client
        self.server = server
        self.scope = trio.CancelScope()
        self.silent = False


class CuttingProxy:
    """See the module docstring."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self._links: set[_Link] = set()
        self.refusing = False
        self._flowing = trio.Event()
        self._flowing.set()
        self.connections = 0
        """Connections accepted (and forwarded) so far."""
        self.cuts = 0

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(f"http://127.0.0.1:{port}")

    def cut(self) -> int:
        """Reset every open connection, both ways; returns how many there were."""
        links = list(self._links)
        for link in links:
            link.scope.cancel()
        self.cuts += 1
        return len(links)

    def go_silent(self) -> None:
        """Stop forwarding on every open connection, without closing any."""
        for link in self._links:
            link.silent = True

    def hold(self) -> None:
        """Forward nothing more until :meth:`resume`; keep it (the kernel's buffers, then
        the senders wait)."""
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def resume(self) -> None:
        """Forward what was held, and go on forwarding."""
        self._flowing.set()

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.refusing:
            _reset(client)
            return
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.target)
        except OSError:
            _reset(client)
            return
        self.connections += 1
        link = _Link(client, server)
        self._links.add(link)
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, link, client, server)
                    nursery.start_soon(self._pump, link, server, client)
        finally:
            self._links.discard(link)
            _reset(client)
            _reset(server)

    async def _pump(self, link: _Link, source: trio.SocketStream, sink: trio.SocketStream
                    ) -> None:
        try:
            while True:
                data = await source.receive_some(65536)
                if not data:
                    break
                if not self._flowing.is_set():
                    await self._flowing.wait()
                if not link.silent:
                    await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        # One side closed: end both (the cancel scope resets them).
        link.scope.cancel()
