"""docs/deploy.md's nginx configuration, for real: Debian's nginx in front of two
``liveloop serve`` processes on one Redis, running the tests every balancer passes
(``tests/deploy.py``): the official npm client (in its default mode, polling then the
upgrade to WebSocket, and WebSocket-only) matched across the two and relaying, and a
draining node's handshakes retried on the other.

The nginx configuration is the documented one (read from docs/deploy.md between its
markers) with only the addresses changed: the upstream servers are the two nodes, and it
listens on a free loopback port. Around it the test adds what running it unprivileged in
a temporary prefix needs (pid, logs, temp paths) and an access log of which upstream
served which client address.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from . import deploy
from .cluster import free_port
from .deploy import *  # noqa: F403  (the tests every balancer passes, run here)


def our_config(documented: str, listen: int, upstreams: list[str]) -> str:
    """The documented configuration with the test's addresses: the upstream servers
    replaced by ``upstreams`` (host:port), and ``listen`` on 127.0.0.1."""
    servers = re.findall(r"^\s*server \S+:\d+ (.*);$", documented, re.M)
    assert len(servers) == 2, "the documented upstream has two servers"
    lines = [f"    server {upstream} {servers[0]};" for upstream in upstreams]
    config = deploy.replace_once(r"(?:^\s*server \S+:\d+ .*;\n)+", "\n".join(lines) + "\n",
                                 documented)
    return deploy.replace_once(r"^(\s*)listen 80;$", rf"\1listen 127.0.0.1:{listen};", config)


def parse_log(text: str) -> list[deploy.Logged]:
    """The access log (``$remote_addr|$upstream_addr|$request``): nginx lists every
    upstream it tried, comma-separated, the one that answered last."""
    logged = []
    for line in text.splitlines():
        client, upstreams, request = line.split("|", 2)
        tried = [upstream.strip() for upstream in upstreams.split(",")]
        logged.append(deploy.Logged(client, tried[-1], len(tried) > 1, request))
    return logged


@pytest.fixture
async def deployment(nursery: trio.Nursery, tmp_path: Path
                     ) -> AsyncIterator[deploy.Deployment]:
    binary = deploy.need_program("nginx")
    async with deploy.two_nodes(nursery) as nodes:
        port = free_port()
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        access = prefix / "access.log"
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log info;\nevents {{ worker_connections 256; }}\n"
            "http {\n"
            f"  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n"
            f"  fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n"
            f"  scgi_temp_path {prefix}/scgi;\n"
            "  log_format upstream '$remote_addr|$upstream_addr|$request';\n"
            f"  access_log {access} upstream;\n"
            + our_config(deploy.documented_config("nginx"), port,
                         [deploy.address(n) for n in nodes])
            + "}\n")
        command = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                   "-e", str(prefix / "error.log")]
        # SIGTERM at the end: nginx's fast shutdown.
        async with deploy.balancer_process([*command, "-t"], command,
                                           f"http://127.0.0.1:{port}", prefix / "output.log",
                                           access, parse_log) as balancer:
            yield balancer, nodes


def test_the_documented_timeouts_outlast_a_silent_healthy_session() -> None:
    timeouts = re.findall(r"^\s*proxy_(?:read|send)_timeout (\d+)s;$",
                          deploy.documented_config("nginx"), re.M)
    assert len(timeouts) == 2
    assert all(deploy.beyond_ping_deadline(float(seconds)) for seconds in timeouts)
