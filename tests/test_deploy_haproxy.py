"""docs/deploy.md's HAProxy configuration, for real: Debian's HAProxy in front of two
``liveloop serve`` processes on one Redis, running the tests every balancer passes
(``tests/deploy.py``): the official npm client (in its default mode, polling then the
upgrade to WebSocket, and WebSocket-only) matched across the two and relaying, and a
draining node's handshakes retried on the other.

The HAProxy configuration is the documented one (read from docs/deploy.md between its
markers) with only the addresses changed: the servers are the two nodes, and it binds a
free loopback port. The test puts a ``global`` section of its own in front, which sends
the documented ``log global``/``option httplog`` lines to HAProxy's stderr, a file the
test reads to know which server answered which client address. HAProxy runs in the
foreground (``-db``), with no pid file, socket or chroot.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio

from . import deploy
from .cluster import free_port
from .deploy import *  # noqa: F403  (the tests every balancer passes, run here)

GLOBAL = "global\n    log stderr format raw local0\n\n"
# option httplog with `format raw`: client:port [accept date] frontend backend/server
# timers status bytes cookies termination-state conns/.../retries queues "request"
_HTTPLOG = re.compile(r'^(?P<client>[0-9.]+):\d+ \[[^]]*\] \S+ \S+/(?P<server>\S+) \S+ '
                      r'-?\d+ .* \d+/\d+/\d+/\d+/(?P<retries>\+?\d+) \d+/\d+ "(?P<request>.*)"$')


def our_config(documented: str, listen: int, upstreams: list[str]) -> str:
    """The documented configuration with the test's addresses: the two servers at
    ``upstreams`` (host:port), bound to ``listen`` on 127.0.0.1."""
    servers = re.findall(r"^\s*server (\S+) \S+:\d+", documented, re.M)
    assert len(servers) == 2, "the documented backend has two servers"
    config = documented
    for name, upstream in zip(servers, upstreams, strict=True):
        config = deploy.replace_once(rf"^(\s*server {name}) \S+:\d+", rf"\1 {upstream}",
                                     config)
    return deploy.replace_once(r"^(\s*bind) :80$", rf"\1 127.0.0.1:{listen}", config)


def parse_log(servers: dict[str, str], text: str) -> list[deploy.Logged]:
    """HAProxy's log lines (others, such as start-up notices, are passed over), with
    server names turned into the nodes' addresses through ``servers``. HAProxy logs
    the server that answered and how many times it retried ("+": on another server)."""
    logged = []
    for line in text.splitlines():
        if found := _HTTPLOG.match(line):
            logged.append(deploy.Logged(found["client"], servers[found["server"]],
                                        found["retries"] != "0", found["request"]))
    return logged


@pytest.fixture
async def deployment(nursery: trio.Nursery, tmp_path: Path
                     ) -> AsyncIterator[deploy.Deployment]:
    binary = deploy.need_program("haproxy")
    async with deploy.two_nodes(nursery) as nodes:
        port = free_port()
        documented = deploy.documented_config("haproxy")
        upstreams = [deploy.address(node) for node in nodes]
        servers = dict(zip(re.findall(r"^\s*server (\S+) ", documented, re.M), upstreams,
                           strict=True))
        config = tmp_path / "haproxy.cfg"
        config.write_text(GLOBAL + our_config(documented, port, upstreams))
        output = tmp_path / "haproxy.log"
        # SIGTERM at the end: HAProxy's hard stop.
        async with deploy.balancer_process([binary, "-c", "-f", str(config)],
                                           [binary, "-db", "-f", str(config)],
                                           f"http://127.0.0.1:{port}", output, output,
                                           partial(parse_log, servers)) as balancer:
            yield balancer, nodes
        assert "[ALERT]" not in output.read_text(), output.read_text()


def test_the_documented_timeouts_outlast_a_silent_healthy_session() -> None:
    documented = deploy.documented_config("haproxy")
    for name in ("client", "server", "tunnel"):
        (seconds,) = re.findall(rf"^\s*timeout {name} (\d+)s$", documented, re.M)
        assert deploy.beyond_ping_deadline(float(seconds)), name


async def test_the_operations_guides_configuration_is_valid(tmp_path: Path) -> None:
    """docs/operations.md's HAProxy with TLS, checked by ``haproxy -c`` (the
    certificate, which the test has not got, left out of its ``bind``)."""
    documented = deploy.documented_config("haproxy", "haproxy-tls",
                                          deploy.DOCS.parent / "operations.md")
    config = tmp_path / "haproxy.cfg"
    config.write_text(deploy.replace_once(r"^(\s*bind) :443 ssl crt .*$",
                                          rf"\1 127.0.0.1:{free_port()}", documented))
    checked = await trio.run_process([deploy.need_program("haproxy"), "-c", "-f", str(config)],
                                     capture_stdout=True, capture_stderr=True, check=False)
    output = (checked.stdout + checked.stderr).decode()
    assert checked.returncode == 0, output
    assert "[WARNING]" not in output, output
