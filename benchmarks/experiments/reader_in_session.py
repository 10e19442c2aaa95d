"""Would the session task reading its own socket beat a connection task that hands it over?

The relay pattern on two socket pairs, N messages: A's socket becomes readable, A's
session passes the data to B's session, which writes B's socket.

- design 1 (what Live Loop does): a reader task per connection hands what it read to
  its session over a memory channel; A's session posts to B's over B's channel.
- design 2: each session waits on its own socket; a post cancels the receiver's wait
  (the only way to wake a task blocked in ``wait_readable``), so every wait needs a
  cancel scope.

    taskset -c 0 python benchmarks/experiments/reader_in_session.py

prints the process CPU per message of each (the driver's own work included, the same in
both). On this machine: design 1 41-49 µs, design 2 67-82 µs.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import trio

N = 20_000

def _pairs() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    a_client, a_server = socket.socketpair()
    b_client, b_server = socket.socketpair()
    for sock in (a_client, a_server, b_client, b_server):
        sock.setblocking(False)
    return a_client, a_server, b_client, b_server


async def _drive(nursery: trio.Nursery, a_client: socket.socket, b_client: socket.socket
                 ) -> float:
    """Send N messages into A and read each out of B; the CPU per message, in µs."""
    await trio.sleep(0.01)
    start = time.process_time()
    for _ in range(N):
        a_client.send(b"x" * 100)
        await trio.lowlevel.wait_readable(b_client)
        b_client.recv(65536)
    elapsed = time.process_time() - start
    nursery.cancel_scope.cancel()
    return elapsed / N * 1e6


async def design1() -> float:
    a_client, a_server, b_client, b_server = _pairs()
    a_send, a_receive = trio.open_memory_channel[bytes](16)
    b_send, b_receive = trio.open_memory_channel[bytes](16)

    async def reader() -> None:
        while True:
            await trio.lowlevel.wait_readable(a_server)
            a_send.send_nowait(os.read(a_server.fileno(), 65536))

    async def session_a() -> None:
        async for data in a_receive:
            b_send.send_nowait(data)

    async def session_b() -> None:
        async for data in b_receive:
            os.write(b_server.fileno(), data)

    async with trio.open_nursery() as nursery:
        for task in (reader, session_a, session_b):
            nursery.start_soon(task)
        return await _drive(nursery, a_client, b_client)


async def design2() -> float:
    a_client, a_server, b_client, b_server = _pairs()
    b_send, b_receive = trio.open_memory_channel[bytes](16)
    waiting: dict[str, Any] = {"b": None}

    async def session_a() -> None:
        while True:
            await trio.lowlevel.wait_readable(a_server)
            b_send.send_nowait(os.read(a_server.fileno(), 65536))
            if waiting["b"] is not None:
                waiting["b"].cancel()  # wake B: it waits on its socket, not its mailbox

    async def session_b() -> None:
        while True:
            try:
                while True:
                    os.write(b_server.fileno(), b_receive.receive_nowait())
            except trio.WouldBlock:
                pass
            with trio.CancelScope() as scope:
                waiting["b"] = scope
                await trio.lowlevel.wait_readable(b_server)
            waiting["b"] = None

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session_a)
        nursery.start_soon(session_b)
        return await _drive(nursery, a_client, b_client)


if __name__ == "__main__":
    for _ in range(3):
        one, two = trio.run(design1), trio.run(design2)
        print(f"design1 {one:.1f} µs/msg   design2 {two:.1f} µs/msg")
