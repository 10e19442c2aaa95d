"""Starting, measuring and stopping the servers the benchmarks load (shared by
``run.py`` and ``cluster.py``): free ports, the command lines of Live Loop and the Node
baseline, Redis, CPU seconds from ``/proc``, pinning, a clean stop."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
NODE_BASELINE = HERE / "baselines" / "node" / "server.mjs"

LOAD_FLAGS = ("--rate-limits", "off", "--relay-budget", "0", "--handshakes-per-ip",
              "1000000", "--max-connections-per-ip", "1000000")
"""``liveloop serve`` flags for a bench: every client comes from one address and relays
more than a person would."""


def free_port() -> int:
    """A port on 127.0.0.1 that is free now (never 3000, the development default)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != 3000:
            return port


def liveloop_command(port: int, *extra: str) -> list[str]:
    """``liveloop serve`` on 127.0.0.1:``port`` with :data:`LOAD_FLAGS` and ``extra``."""
    return [PYTHON, "-m", "liveloop", "serve", "--bind", f"127.0.0.1:{port}", *LOAD_FLAGS,
            *extra]


def node_command(port: int, recovery: bool = False) -> list[str]:
    """Node's socket.io baseline (``npm ci --prefix benchmarks/baselines/node`` first),
    with connection state recovery on or off."""
    return ["node", str(NODE_BASELINE), "--port", str(port),
            *(["--recovery"] if recovery else [])]


def redis_command(port: int) -> list[str]:
    """A throwaway Redis (or Valkey) on 127.0.0.1:``port``: no persistence."""
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        raise RuntimeError("no redis-server or valkey-server on PATH")
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no"]


def pinned(cpu: int | None, command: list[str]) -> list[str]:
    """``command`` run on CPU ``cpu`` only (``taskset``), or as is."""
    if cpu is None or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", str(cpu), *command]


def wait_listening(port: int, process: subprocess.Popen[bytes] | None = None,
                   deadline: float = 30) -> None:
    """Return once something accepts on 127.0.0.1:``port``; RuntimeError if ``process``
    exits first or ``deadline`` seconds pass."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {deadline} s")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux ``/proc``)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; waits for the exit."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
