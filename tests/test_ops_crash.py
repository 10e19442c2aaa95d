"""A matchmaker crash: one CRITICAL record with its traceback, through logging, and a
non-zero exit, under ``liveloop serve`` and under ``hypercorn -k trio``; never a raw
exception group on stderr."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import trio

from tests.crashing_server import MARKER

ROOT = Path(__file__).parent.parent
_URL = re.compile(rb"(http://127\.0\.0\.1:\d+)[^\d]")


def _request_room(base: str) -> None:
    """Handshake, CONNECT and request-room over long-polling (blocking; in a thread)."""
    opened = urllib.request.urlopen(f"{base}/socket.io/?EIO=4&transport=polling",
                                    timeout=10).read().decode()
    url = f"{base}/socket.io/?EIO=4&transport=polling&sid={json.loads(opened[1:])['sid']}"
    for body in ("40", "42" + json.dumps(["request-room", {"name": "crash"}])):
        urllib.request.urlopen(urllib.request.Request(url, data=body.encode(),
                                                      method="POST"), timeout=10).read()


async def _run_until_crash(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Start ``command``, wait for its listening line, make its matchmaker crash; its exit
    status and everything it wrote on stderr."""
    process = await trio.lowlevel.open_process(
        command, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert process.stderr is not None
    seen = b""
    try:
        with trio.fail_after(60):
            while (found := _URL.search(seen)) is None:
                chunk = await process.stderr.receive_some(65536)
                assert chunk, seen.decode()
                seen += chunk
            await trio.to_thread.run_sync(_request_room, found.group(1).decode())
            while chunk := await process.stderr.receive_some(65536):
                seen += chunk
            status = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return status, seen.decode()


def _critical_records(stderr: str) -> list[dict[str, str]]:
    """The JSON log records among ``stderr``'s lines; every other line must be
    hypercorn's own one-line INFO (no traceback, no exception group outside a record)."""
    records = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
        else:
            assert "[INFO]" in line and "Traceback" not in line, line
    return [r for r in records if r["level"] == "CRITICAL"]


@pytest.mark.parametrize("host", ["liveloop", "hypercorn"])
async def test_matchmaker_crash_is_logged_critical_and_exits_non_zero(host: str) -> None:
    env = {**os.environ, "LIVELOOP_LOG_FORMAT": "json", "PYTHONPATH": str(ROOT),
           "CRASH_MATCHMAKER": "1"}
    if host == "liveloop":
        command = [sys.executable, "-m", "tests.crashing_server", "liveloop", "serve",
                   "--bind", "127.0.0.1:0"]
    else:
        # --workers 0: hypercorn serves in its own process, whose status we see (with a
        # spawned worker, hypercorn 0.18's parent exits 0 whatever the worker did).
        command = [sys.executable, "-m", "tests.crashing_server", "hypercorn", "-k",
                   "trio", "--workers", "0", "--bind", "127.0.0.1:0",
                   "tests.crashing_server:app"]
    status, stderr = await _run_until_crash(command, env)
    assert status == 1, stderr
    critical = _critical_records(stderr)
    assert len(critical) == 1, stderr
    assert MARKER in critical[0]["traceback"]
    assert "matchmaker.py" in critical[0]["traceback"]
