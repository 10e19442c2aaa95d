#!/usr/bin/env python3
"""What per-request routing between workers costs (``liveloop serve --workers N``).

    python benchmarks/workers_routing.py [--seconds 8] [--connections 8]

Serves the raw Engine.IO echo of ``liveloop conformance`` (``/engine.io/``: no
Socket.IO, no shared state, so only HTTP and routing are measured; the default
heartbeat) three ways, one after the other, with the same load: kept-alive
connections, each driving two polling sessions in a loop of POST (a message) and GET
(its echo):

- ``one``: ``--workers 1``, hypercorn serves HTTP (today's single process);
- ``local``: ``--workers 2``, each connection carries only sessions of the worker that
  holds it, so no request is passed (the front door's own HTTP/1.1 loop, routed);
- ``passed``: ``--workers 2``, each connection alternates between a session on each
  worker, so every request is passed to the other worker with the connection's fd.

It prints requests per second and the server's CPU time per request (parent and
workers, from /proc), and their ratios against ``local``. The generator runs in this
process and shares the machine's cores with the server, so compare the ratios of runs
made together, not absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import re
import signal
import subprocess
import sys
import time

import servers
import trio

from liveloop.app import RootApp
from liveloop.bench.http1 import KeptAlive
from liveloop.config import Settings
from liveloop.conformance import EchoApp
from liveloop.serve import serve
from liveloop.server import EngineServer
from liveloop.workers import run_workers

PATH = "/engine.io/?EIO=4&transport=polling"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its children still running, in seconds."""
    return sum(servers.cpu_seconds(one) for one in (pid, *servers.children(pid)))


async def open_connection(port: int) -> KeptAlive:
    # hypercorn closes after keep_alive_max_requests (1,000): open again then
    return await KeptAlive.open("127.0.0.1", port, reopen=True)


async def handshake(port: int) -> str:
    """A new session (on whichever worker's turn it is); its sid."""
    connection = await open_connection(port)
    async with connection.stream:
        _, body = await connection.request("GET", PATH)
    return body.decode().split('"sid":"', 1)[1].split('"', 1)[0]


class Session:
    def __init__(self, sid: str) -> None:
        self.sid = sid


async def drive(port: int, sessions: list[Session], deadline: float, counts: list[int]
                ) -> None:
    """Loop over ``sessions`` on one connection: POST a message to each, then GET each
    one's echo, until ``deadline``; counts requests."""
    connection = await open_connection(port)
    try:
        while trio.current_time() < deadline:
            for session in sessions:
                # A pong in every POST, as pings come every 25 s: a pong nobody asked
                # for changes nothing.
                body = b"4hello\x1e3"
                _, answer = await connection.request("POST", f"{PATH}&sid={session.sid}",
                                                     body)
                assert answer == b"ok", answer
            for session in sessions:
                _, answer = await connection.request("GET", f"{PATH}&sid={session.sid}")
                packets = answer.split(b"\x1e")
                assert b"4hello" in packets, answer
            counts[0] += 2 * len(sessions)
    finally:
        await connection.aclose()


async def run(port: int, mode: str, seconds: float, connections: int, pid: int
              ) -> tuple[float, float]:
    """Requests per second and server CPU seconds per request for ``mode``."""
    # Sessions by worker tag ("-" for one worker); no session is driven by two
    # connections (two GETs at once would close it).
    tags = ["-"] if mode == "one" else ["A", "B"]
    need = 2 * connections // len(tags)
    by_worker: dict[str, list[str]] = {tag: [] for tag in tags}
    while min(len(sids) for sids in by_worker.values()) < need:
        sid = await handshake(port)
        by_worker[sid[0] if mode != "one" else "-"].append(sid)
    plans: list[list[Session]] = []
    for i in range(connections):
        if mode == "passed":  # one session of each worker: every request moves
            plans.append([Session(by_worker["A"][i]), Session(by_worker["B"][i])])
        else:  # two sessions of one worker: the connection stays there
            sids = by_worker[tags[i % len(tags)]]
            j = 2 * (i // len(tags))
            plans.append([Session(sids[j]), Session(sids[j + 1])])
    counts = [0]
    cpu = cpu_seconds(pid)
    started = time.monotonic()
    deadline = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for plan in plans:
            nursery.start_soon(drive, port, plan, deadline, counts)
    elapsed = time.monotonic() - started
    used = cpu_seconds(pid) - cpu
    return counts[0] / elapsed, used / counts[0]


def echo_app(settings: Settings) -> RootApp:
    """The conformance suite's raw Engine.IO echo, with the heartbeat of ``settings``
    (the suite's own 300 ms / 200 ms would close sessions of a loaded generator)."""
    return RootApp({"/engine.io/": EngineServer(settings, EchoApp)}, None)


def serve_echo(workers: int) -> None:
    """This script's server side: the echo app on a free port, as ``liveloop serve``
    would run it (one process, or ``--workers`` through liveloop.workers)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings(bind="127.0.0.1:0", workers=workers, allowed_origins=("*",))
    if workers > 1:
        sys.exit(run_workers(settings, echo_app))
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(functools.partial(serve, echo_app(settings), settings))


def start(workers: int) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen([sys.executable, __file__, "--serve", str(workers)],
                               stderr=subprocess.PIPE)
    assert process.stderr is not None
    for line in process.stderr:
        found = re.search(rb"listening on http://127.0.0.1:(\d+)", line)
        if found:
            return process, int(found.group(1))
    raise RuntimeError("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve_echo(args.serve)
        return
    results: dict[str, tuple[float, float]] = {}
    for mode, workers in (("one", 1), ("local", 2), ("passed", 2)):
        process, port = start(workers)
        try:
            time.sleep(1.0)  # let the workers finish starting (a second process)
            results[mode] = trio.run(run, port, mode, args.seconds, args.connections,
                                     process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait()
    base_rate, base_cpu = results["local"]
    print(f"{'mode':8} {'requests/s':>11} {'CPU µs/request':>15} {'rate ratio':>11}"
          f" {'CPU ratio':>10}")
    for mode, (rate, cpu) in results.items():
        print(f"{mode:8} {rate:11.0f} {cpu * 1e6:15.1f} {rate / base_rate:11.2f}"
              f" {cpu / base_cpu:10.2f}")


if __name__ == "__main__":
    main()
