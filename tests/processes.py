"""Live Loop and the services around it as real processes, for the deployment tests.

- :func:`liveloop_process`: ``liveloop serve|conformance [flags]`` in a child process,
  on a free port it picks itself (``--bind 127.0.0.1:0``); its URL is read from its
  log. Stopped by SIGTERM when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping

import attrs
import trio

from .cluster import START_DEADLINE
from .conftest import DEADLINE, http_get

_LISTENING = re.compile(rb"listening on (http://[0-9.]+:[0-9]+)")


@attrs.define
class Running:
    """A running ``liveloop`` process: its URL and everything it logged so far."""

    url: str
    process: trio.Process
    log: bytearray

    def text(self) -> str:
        return self.log.decode(errors="replace")


@contextlib.asynccontextmanager
async def liveloop_process(*args: str, env: Mapping[str, str] | None = None
                           ) -> AsyncIterator[Running]:
    """``python -m liveloop ARGS --bind 127.0.0.1:0``, served and reachable (``GET /``
    answers... or any HTTP answer for ``conformance``) before this yields; SIGTERM at
    the end, and its exit status must then be 0."""
    command = [sys.executable, "-m", "liveloop", *args, "--bind", "127.0.0.1:0"]
    # No drain at the end: the test's clients may still be in a call.
    environ = {**os.environ, "LIVELOOP_DRAIN_TIMEOUT": "0", **(env or {})}
    log = bytearray()
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=environ)
        assert process.stderr is not None
        stderr = process.stderr
        found = trio.Event()
        url: list[str] = []

        async def read_log() -> None:
            async for chunk in stderr:
                log.extend(chunk)
                if not found.is_set() and (match := _LISTENING.search(log)):
                    url.append(match.group(1).decode())
                    found.set()
            found.set()

        nursery.start_soon(read_log)
        try:
            with trio.move_on_after(START_DEADLINE):
                await found.wait()
                await http_get(url[0], "/")  # the workers accept: it is serving
            assert url, f"liveloop did not start:\n{log.decode(errors='replace')}"
            running = Running(url[0], process, log)
            yield running
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with trio.move_on_after(DEADLINE) as waiting:
                await process.wait()
            if waiting.cancelled_caught:
                process.kill()
                await process.wait()
        assert process.returncode == 0, f"exit status {process.returncode}:\n{running.text()}"


async def until_draining(url: str) -> None:
    """Until the server at ``url`` says it drains (``/readyz`` answers 503): its signal
    has been handled. Another process's state: nothing to wait on but its answers."""
    with trio.fail_after(DEADLINE):
        while True:
            if (await http_get(url, "/readyz")).status == 503:
                return
            await trio.sleep(0.01)
