"""Real services for the browser tests: coturn, a ``liveloop serve`` process, Chromium.

- :func:`start_coturn`: Debian's ``turnserver`` on a free loopback port, in the TURN REST
  API mode (``use-auth-secret``), no TLS/DTLS, listening and relaying on 127.0.0.1,
  loopback peers allowed, no CLI; ready once it answers a STUN Binding request.
- :func:`start_liveloop`: the real command, ``python -m liveloop serve``, on port 0; ready
  once it logs the address it bound.
- :data:`CHROMIUM_ARGS`: the system Chromium (Playwright drives it; nothing downloads a
  browser) with a fake camera and microphone and nothing that phones home.

These run as processes beside the test (Playwright's sync API is not Trio), and every
wait polls a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-default-apps", "--mute-audio",
    # A fake camera and microphone. No --use-fake-ui-for-media-stream: it would grant
    # every page; each test context is granted (or refused) by Playwright instead.
    "--use-fake-device-for-media-stream",
    # Real host addresses in candidates rather than mDNS names nobody here resolves.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
DEADLINE = 20.0
"""Seconds a service may take to start."""


def require(program: str) -> str:
    """The path of ``program``, or a failure naming what installs it."""
    path = shutil.which(program) or (program if os.path.exists(program) else None)
    if path is None:
        raise RuntimeError(f"{program} is missing: `.ci/run` installs it (apt-get install "
                           "coturn chromium)")
    return path


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 when asked."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def stun_binding_answered(port: int, timeout: float = 0.2) -> bool:
    """Whether a STUN server answers a Binding request on 127.0.0.1:``port`` (UDP)."""
    transaction = secrets.token_bytes(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(timeout)
        udp.sendto(request, ("127.0.0.1", port))
        try:
            answer = udp.recv(2048)
        except (TimeoutError, ConnectionRefusedError):
            return False
    return answer[:2] == b"\x01\x01" and answer[8:20] == transaction


@attrs.frozen
class Coturn:
    port: int
    secret: str
    next_secret: str
    """A second secret coturn accepts too, as while the secret is rotated."""
    realm: str
    log: Path

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"


@contextlib.contextmanager
def start_coturn(workdir: Path) -> Iterator[Coturn]:
    """Run ``turnserver`` until the block ends."""
    program = require("turnserver")
    port = free_port()
    secret = secrets.token_hex(16)
    log = workdir / "turnserver.log"
    coturn = Coturn(port, secret, secrets.token_hex(16), "liveloop.test", log)
    args = [
        program, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
        f"--listening-port={port}", "--use-auth-secret", f"--static-auth-secret={secret}",
        f"--static-auth-secret={coturn.next_secret}",
        f"--realm={coturn.realm}", "--no-tls", "--no-dtls", "--allow-loopback-peers",
        "--no-cli", "--no-tcp-relay", "--min-port=40000", "--max-port=40999",
        f"--pidfile={workdir / 'turnserver.pid'}", f"--log-file={log}", "--simple-log",
        "--no-stdout-log", "--verbose",
    ]
    with open(workdir / "turnserver.out", "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + DEADLINE
        while not stun_binding_answered(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"turnserver did not start: {log.read_text()[-2000:]}"
                                   if log.exists() else "turnserver did not start")
        yield coturn
    finally:
        process.terminate()
        process.wait(10)


@attrs.frozen
class Liveloop:
    url: str
    log: Path


@contextlib.contextmanager
def start_liveloop(workdir: Path, *args: str, env: dict[str, str] | None = None,
                   name: str = "liveloop") -> Iterator[Liveloop]:
    """Run ``python -m liveloop serve --bind 127.0.0.1:0 ARGS`` until the block ends."""
    log = workdir / f"{name}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LIVELOOP_")}
    environ.update(env or {})
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "liveloop", "serve", "--bind", "127.0.0.1:0", *args],
            stdout=out, stderr=subprocess.STDOUT, env=environ)
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            found = re.search(r"listening on (\S+)", log.read_text())
            if found:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"liveloop did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)  # polling a log file for a line; no event to wait on
        yield Liveloop(found.group(1).rstrip(","), log)
    finally:
        process.terminate()
        process.wait(10)
