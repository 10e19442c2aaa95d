"""``liveloop serve --workers N``: N worker processes on one address, and their parent.

The parent binds one listening socket per worker, all on the same address with
``SO_REUSEPORT`` (the kernel spreads new connections over them by a hash of the
addresses), makes each worker's inbox for connections passed between workers
(:mod:`liveloop.server.routing`), and forks the workers. Each worker builds its own app
and serves it with :func:`liveloop.serve.serve`, routing every request to the worker
that owns its session. The parent then only supervises:

- SIGTERM and SIGINT are passed to every worker (each in its own process group, so a
  terminal's Ctrl-C reaches them once, through the parent), and the parent exits when
  they all have: status 0 if they all exited cleanly.
- A worker that exits by itself (a crash, an actor failing, a kill) stops the whole
  service: the others get SIGTERM, and the parent exits with status 1. It is not
  restarted: its people's connections are gone with it, and a supervisor above (systemd,
  a container runtime) restarts the whole service on a clean slate, where the routing
  by sid stays simple (a worker index always means the same live process).
- Workers stop by themselves when the parent is gone, even by SIGKILL: each watches a
  pipe whose writing end only the parent holds.

Metrics are per process, as with one worker: worker ``i`` serves its own on
``LIVELOOP_METRICS_BIND``'s port plus ``i`` (:func:`worker_metrics_bind`; port 0: each
picks a free one, logged), so each is its own Prometheus target (docs/operations.md says
why not one listener for all).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

import attrs
import trio

from .app import RootApp
from .config import Settings
from .server.routing import MAX_WORKERS, Handoff, Worker, inbox_pair

log = logging.getLogger(__name__)

STOP_GRACE = 30.0
"""Seconds the parent waits for the other workers after one died, before SIGKILL."""


def listeners(bind: str, count: int, backlog: int) -> list[socket.socket]:
    """``count`` sockets listening on ``bind`` (HOST:PORT; port 0 picks one free port
    for all) with ``SO_REUSEPORT``. Connections wait in their backlog until a worker
    accepts them."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, int(port)))
        sock.listen(backlog)
        port = str(sock.getsockname()[1])
        sockets.append(sock)
    return sockets


def worker_metrics_bind(bind: str, index: int) -> str:
    """Worker ``index``'s metrics listener: ``bind`` (HOST:PORT) with PORT + ``index``;
    port 0 stays 0 (a free port each); empty stays empty (metrics off). Raises
    ValueError past port 65535."""
    if not bind:
        return ""
    host, _, port = bind.rpartition(":")
    number = int(port)
    if number == 0:
        return bind
    if number + index > 65535:
        raise ValueError(f"metrics_bind {bind!r}: worker {index} would need port "
                         f"{number + index}; give a lower port")
    return f"{host}:{number + index}"


def run_workers(settings: Settings, make_app: Callable[[Settings], RootApp]) -> int:
    """Fork ``settings.workers`` workers serving ``make_app(settings)`` and supervise
    them (see the module docstring); the process's exit status."""
    count = settings.workers
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(f"--workers must be between 1 and {MAX_WORKERS}")
    from .serve import hypercorn_config

    # A bad metrics port is refused before anything starts: the last worker's is highest.
    worker_metrics_bind(settings.metrics_bind, count - 1)
    sockets = listeners(settings.bind, count, hypercorn_config(settings).backlog)
    inboxes = [inbox_pair() for _ in range(count)]
    lifeline, parent_end = os.pipe()
    pids: list[int] = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            os.setpgid(0, 0)
            os.close(parent_end)
            for other, sock in enumerate(sockets):
                if other != index:
                    sock.close()
            for other, (read, write) in enumerate(inboxes):
                (write if other == index else read).close()
            handoff = Handoff(index, inboxes[index][0],
                              [None if i == index else w for i, (_, w) in enumerate(inboxes)])
            os._exit(_worker(settings, make_app, Worker(handoff, sockets[index], lifeline)))
        pids.append(pid)
    os.close(lifeline)
    host, port = sockets[0].getsockname()[:2]
    for sock in sockets:
        sock.close()
    for read, write in inboxes:
        read.close()
        write.close()
    log.info("Live Loop listening on http://%s:%d with %d workers (pids %s)",
             host, port, count, " ".join(map(str, pids)))
    status = trio.run(_supervise, pids)
    os.close(parent_end)
    return status


def _worker(settings: Settings, make_app: Callable[[Settings], RootApp],
            worker: Worker) -> int:
    """A worker process's life: serve until stopped; its exit status."""
    from .serve import serve

    handoff = worker.handoff
    settings = attrs.evolve(settings, metrics_bind=worker_metrics_bind(
        settings.metrics_bind, handoff.index))
    try:
        trio.run(lambda: serve(make_app(settings), settings, worker=worker))
    except BaseException:
        log.exception("worker %d failed", handoff.index)
        return 1
    finally:
        log.info("worker %d stopped; it passed %d requests to other workers",
                 handoff.index, handoff.passed)
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


async def _supervise(pids: list[int]) -> int:
    """Wait for the workers; pass signals on; stop them all when one exits."""
    running = set(pids)
    failed = False
    stopping = trio.Event()

    def stop(signum: int) -> None:
        for pid in running:
            os.kill(pid, signum)

    async def watch(pid: int, nursery: trio.Nursery) -> None:
        nonlocal failed
        fd = os.pidfd_open(pid)
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
        # The pidfd is readable: the child has exited, so this returns at once.
        _, wait_status = os.waitpid(pid, 0)  # noqa: ASYNC222
        running.discard(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0 or not stopping.is_set():
            failed = True
        if not stopping.is_set():
            log.error("worker pid %d exited (status %d): stopping the others", pid, code)
            stopping.set()
            stop(signal.SIGTERM)
            nursery.start_soon(kill_late)
        if not running:
            nursery.cancel_scope.cancel()

    async def kill_late() -> None:
        await trio.sleep(STOP_GRACE)
        stop(signal.SIGKILL)

    async with trio.open_nursery() as nursery:
        for pid in pids:
            nursery.start_soon(watch, pid, nursery)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal %d: passed to the workers", signum)
                stopping.set()
                stop(signum)
    return 1 if failed else 0
