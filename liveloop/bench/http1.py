"""A kept-alive HTTP/1.1 client connection, one request at a time (h11), for the
benchmarks and tests that drive Live Loop's long-polling by hand on one connection."""

from __future__ import annotations

import h11
import trio


class KeptAlive:
    """One HTTP/1.1 connection reused for every request. If the server ends it after a
    response (hypercorn does after ``keep_alive_max_requests``), it is opened again when
    ``reopen`` (counted in :attr:`reopened`), else the next request fails."""

    def __init__(self, stream: trio.SocketStream, host: str, *, reopen: bool = False) -> None:
        self.stream = stream
        self._host = host
        self._http = h11.Connection(h11.CLIENT)
        self._reopen = reopen
        self.reopened = 0

    @classmethod
    async def open(cls, host: str, port: int, *, reopen: bool = False) -> KeptAlive:
        """A connection to ``host:port``."""
        return cls(await trio.open_tcp_stream(host, port), f"{host}:{port}", reopen=reopen)

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request; its status and whole body."""
        http = self._http
        headers = [("Host", self._host), ("Content-Length", str(len(body)))]
        data = http.send(h11.Request(method=method, target=target, headers=headers)) or b""
        data += (http.send(h11.Data(data=body)) or b"") if body else b""
        await self.stream.send_all(data + (http.send(h11.EndOfMessage()) or b""))
        status = 0
        received = bytearray()
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                received += event.data
            elif isinstance(event, h11.EndOfMessage):
                if http.our_state is h11.DONE and http.their_state is h11.DONE:
                    http.start_next_cycle()
                elif self._reopen:
                    await self._open_again()
                return status, bytes(received)
            else:
                raise RuntimeError(f"unexpected {event!r}")

    async def _open_again(self) -> None:
        peer = self.stream.socket.getpeername()
        await self.stream.aclose()
        self.stream = await trio.open_tcp_stream(*peer)
        self._http = h11.Connection(h11.CLIENT)
        self.reopened += 1

    async def aclose(self) -> None:
        await self.stream.aclose()
