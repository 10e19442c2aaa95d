"""The official protocol test suites (``socketio/engine.io-protocol`` and
``socketio/socket.io-protocol``, their ``test-suite`` directories, npm-installed) against
the conformance app, started by each entry in turn (the ``entry`` fixture).

The suites are fetched, never committed: ``PROTOCOL_SUITES`` names the directory that
holds both checkouts (``/work/suites`` by default; CI reaches no host to fetch them). Without
them these tests are skipped, saying so.

The suites hard-code ``http://localhost:3000``; each run uses a copy of
``test-suite.js`` with the URL of the server under test instead, beside a
``node-imports.js`` of ours that gives it its globals, as the suite's own does, with one
change: a WebSocket delivers each ``message`` (and its ``close``) in a macrotask of its
own. The suites re-arm one-shot listeners only after an ``await``, so two frames that
arrive in one TCP read lose the second (``docs/wire-layer.md``); no assertion changes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import trio

from liveloop.config import Settings
from liveloop.conformance import create_conformance_app

from .conftest import start_server
from .hosts import Entry, Hosts

SUITES = Path(os.environ.get("PROTOCOL_SUITES", "/work/suites"))
EXPECTED = {"engine.io-protocol": 24, "socket.io-protocol": 32}
"""How many tests each suite has (all must pass)."""

NODE_IMPORTS = """\
import fetch from "node-fetch";
import { WebSocket } from "ws";
import chai from "chai";
import chaiString from "chai-string";

chai.use(chaiString);

// One macrotask per received message (and the close after them), in order.
class PacedWebSocket extends WebSocket {
  emit(event, ...args) {
    if (event !== "message" && event !== "close") {
      return super.emit(event, ...args);
    }
    this._paced = (this._paced ?? Promise.resolve()).then(
      () => new Promise((done) => setImmediate(() => { super.emit(event, ...args); done(); }))
    );
    return true;
  }
}

globalThis.fetch = fetch;
globalThis.WebSocket = PacedWebSocket;
globalThis.chai = chai;
"""


def suite_dir(name: str) -> Path:
    return SUITES / name / "test-suite"


def prepare(name: str, url: str, where: Path) -> Path:
    """A runnable copy of suite ``name`` aimed at ``url``, in ``where``."""
    source = suite_dir(name)
    where.mkdir()
    (where / "node_modules").symlink_to(source / "node_modules")
    (where / "package.json").write_text((source / "package.json").read_text())
    (where / "node-imports.js").write_text(NODE_IMPORTS)
    text = (source / "test-suite.js").read_text()
    assert text.count('"http://localhost:3000"') == 1, "the suite's URL line moved"
    (where / "test-suite.js").write_text(text.replace('"http://localhost:3000"', f'"{url}"'))
    return where


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_official_suite(name: str, entry: Entry, hosts: Hosts, nursery: trio.Nursery,
                              tmp_path: Path) -> None:
    if not (suite_dir(name) / "node_modules").is_dir():
        pytest.skip(f"{suite_dir(name)} is not there (set PROTOCOL_SUITES)")
    if entry.in_process:
        settings = Settings(bind="127.0.0.1:0")
        url = await start_server(nursery, create_conformance_app(settings), settings)
    else:
        url = await trio.to_thread.run_sync(hosts.url, {}, "liveloop.conformance:app")
    where = prepare(name, url, tmp_path / name)
    with trio.fail_after(100):
        result = await trio.run_process(
            [str(where / "node_modules" / ".bin" / "mocha"), "--reporter", "dot",
             str(where / "test-suite.js")],
            cwd=where, capture_stdout=True, capture_stderr=True, check=False)
    output = (result.stdout + result.stderr).decode()
    passing = re.search(r"(\d+) passing", output)
    assert result.returncode == 0 and "failing" not in output, output
    assert passing is not None and int(passing.group(1)) == EXPECTED[name], output
