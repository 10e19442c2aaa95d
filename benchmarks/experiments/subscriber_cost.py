#!/usr/bin/env python3
"""CPU a node spends receiving one relayed notice from Redis: coredis's pub/sub against
the raw subscription (``liveloop.cluster.resp.Pushes`` on a socket of its own).

    python benchmarks/experiments/subscriber_cost.py [--messages 50000] [--rounds 3]

Starts a throwaway redis-server; for each way, this process subscribes, and a child
process publishes ``--messages`` notices (a relayed ICE candidate's, about 300 bytes)
in pipelined batches; this process counts its own CPU time (``time.process_time``)
from the first message to the last, and applies nothing: the figure is the receiving
itself (reads, RESP parsing, the hops to the consumer). The ways alternate, ``--rounds``
times.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from servers import free_port, redis_command, stop, wait_listening

from liveloop.cluster import notices, resp
from liveloop.wire.socketio import event_json

CHANNEL = "ll:node:bench"
NOTICE = notices.encode(notices.DeliverNotice(
    "s" * 20, "bench", "r" * 22, "new-ice-candidates", event_json("new-ice-candidates", [{
        "candidate": {
            "candidate": "candidate:1 1 udp 2122260223 192.0.2.1 40001 typ host generation 0",
            "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "1234567.89"}}])))

PUBLISHER = """
import socket, sys
port, count, notice = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
one = b"*3\\r\\n$7\\r\\nPUBLISH\\r\\n$%d\\r\\n%s\\r\\n$%d\\r\\n%s\\r\\n" % (
    len(sys.argv[4]), sys.argv[4].encode(), len(notice), notice)
with socket.create_connection(("127.0.0.1", port)) as sock:
    for start in range(0, count, 200):
        sock.sendall(one * min(200, count - start))
        got = 0
        while got < min(200, count - start):
            got += sock.recv(65536).count(b"\\r\\n")
"""


class Clock:
    """This process's CPU time from the first notice received to the ``count``-th."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.received = 0
        self.started = 0.0

    def tick(self) -> float | None:
        """One more notice: the CPU seconds once it is the last, else None."""
        if not self.received:
            self.started = time.process_time()
        self.received += 1
        return time.process_time() - self.started if self.received == self.count else None


async def receive_coredis(port: int, count: int) -> float:
    import coredis

    client = coredis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    async with client, client.pubsub(channels=[CHANNEL],
                                     ignore_subscribe_messages=True) as pubsub:
        publish(port, count)
        clock = Clock(count)
        async for message in pubsub:
            if message.get("type") == "message" and (seconds := clock.tick()) is not None:
                return seconds
    raise RuntimeError("subscription ended")


async def receive_raw(port: int, count: int) -> float:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    pushes = resp.Pushes()
    async with stream:
        await stream.send_all(resp.command("SUBSCRIBE", CHANNEL))
        clock = Clock(count)
        while data := await stream.receive_some(65536):
            for push in pushes.feed(data):
                if push[0] == b"subscribe":
                    publish(port, count)
                elif push[0] == b"message" and (seconds := clock.tick()) is not None:
                    return seconds
    raise RuntimeError("subscription ended")


def publish(port: int, count: int) -> None:
    subprocess.Popen([sys.executable, "-c", PUBLISHER, str(port), str(count), NOTICE,
                      CHANNEL])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    redis = subprocess.Popen(redis_command(port), stdout=subprocess.DEVNULL)
    try:
        wait_listening(port, redis)
        print(f"{len(NOTICE)}-byte notices, {args.messages} per run; µs of CPU per notice")
        for number in range(args.rounds):
            ways = [("coredis", receive_coredis), ("raw", receive_raw)]
            figures = {}
            for name, way in ways if number % 2 == 0 else ways[::-1]:
                seconds = trio.run(way, port, args.messages)
                figures[name] = 1e6 * seconds / args.messages
            print(f"round {number + 1}: coredis {figures['coredis']:.1f}, raw "
                  f"{figures['raw']:.1f}, raw / coredis {figures['raw'] / figures['coredis']:.2f}",
                  flush=True)
    finally:
        stop(redis)
    return 0


if __name__ == "__main__":
    sys.exit(main())
