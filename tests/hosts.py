"""The ways a user starts Live Loop, as servers the integration tests can run against.

:data:`ENTRIES`: ``serve`` (``liveloop serve``'s :func:`~liveloop.serve.serve`, in the
test's own nursery, one per test as before) and the ASGI servers started as the user
would, in a child process: ``hypercorn -k trio``, ``hypercorn`` (its default asyncio
worker: Trio as a guest), ``hypercorn -k uvloop`` and ``uvicorn``.

A child server costs seconds to start on a loaded machine, so :class:`Hosts` starts one
per entry, settings and test module, and keeps it for the module's tests (see
``tests/conftest.py``'s ``hosts`` fixture); tests that read ``/api/status`` take the
counts as they were when the test began (see ``Live`` in the integration tests).

Each child binds ``127.0.0.1:0`` and prints the URL it listens on; we read it from its
log, since a process we don't control can't report its port otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import attrs

BIN = Path(sys.executable).parent
START_DEADLINE = 60.0
"""Seconds a child server may take to start listening (imports on a loaded machine)."""

_URL = re.compile(rb"(?:Running on|running on) (http://127\.0\.0\.1:\d+)")


@attrs.frozen
class Entry:
    """One way to start the app: ``argv`` runs it on ``127.0.0.1:0`` (empty: in-process
    ``liveloop serve``)."""

    name: str
    argv: tuple[str, ...]
    app: str = "liveloop.app:app"

    @property
    def in_process(self) -> bool:
        return not self.argv

    @property
    def available(self) -> bool:
        return self.name != "hypercorn-uvloop" or importlib.util.find_spec("uvloop") is not None

    def command(self, app: str | None = None) -> list[str]:
        return [*self.argv, app or self.app]


_HYPERCORN = (str(BIN / "hypercorn"), "--bind", "127.0.0.1:0", "--graceful-timeout", "1")
ENTRIES = (
    Entry("serve", ()),
    Entry("hypercorn-trio", (*_HYPERCORN, "-k", "trio")),
    Entry("hypercorn", _HYPERCORN),
    Entry("hypercorn-uvloop", (*_HYPERCORN, "-k", "uvloop")),
    Entry("uvicorn", (str(BIN / "uvicorn"), "--host", "127.0.0.1", "--port", "0",
                      "--timeout-graceful-shutdown", "1")),
)
GUEST_ENTRIES = tuple(e for e in ENTRIES if e.name in ("hypercorn", "hypercorn-uvloop", "uvicorn"))


def env_for(settings: Mapping[str, object]) -> dict[str, str]:
    """The environment that gives a child these settings (``LIVELOOP_*``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVELOOP_")}
    for name, value in settings.items():
        raw = ("on" if value else "off") if isinstance(value, bool) else str(value)
        env["LIVELOOP_" + name.upper()] = raw
    return env


class ChildServer:
    """One server process; :meth:`start` returns its URL once it listens."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.process = subprocess.Popen(argv, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def output(self) -> bytes:
        self._log.seek(0)
        return self._log.read()

    def start(self) -> str:
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            found = _URL.search(self.output())
            if found:
                return found.group(1).decode()
            if self.process.poll() is not None:
                break
            time.sleep(0.05)  # a readiness poll of a child's log, not test synchronisation
        self.stop()
        raise AssertionError(f"{self.argv} did not start:\n{self.output().decode()}")

    def stop(self) -> int:
        """SIGTERM, and its exit status (killed after a deadline)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.argv} ignored SIGTERM:\n{self.output().decode()}"
                                 ) from None
        finally:
            self._log.close()


SHARED = {"handshakes_per_ip": 1_000_000}
"""Settings every child server gets: it serves a whole module's tests, all from
127.0.0.1, and the per-address handshake window (20 per 10 s by default, made for one
client) would refuse later tests' clients. One test alone stays far below the default,
which the in-process ``serve`` entry keeps; the limit itself is tested in
``tests/test_limits.py``."""


class Hosts:
    """Child servers of one entry, one per distinct settings, kept until :meth:`close`."""

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self._servers: dict[tuple[tuple[str, object], ...], tuple[ChildServer, str]] = {}

    def url(self, settings: Mapping[str, object], app: str | None = None) -> str:
        key = (("app", app), *sorted(settings.items()))
        if key not in self._servers:
            child = ChildServer(self.entry.command(app), env_for({**SHARED, **settings}))
            self._servers[key] = (child, child.start())
        return self._servers[key][1]

    def close(self) -> None:
        for child, _ in self._servers.values():
            child.stop()
        self._servers.clear()
