"""Run a host (``liveloop`` or ``hypercorn``) whose matchmaker crashes on its first
message, for the crash tests: ``python crashing_server.py liveloop|hypercorn ARGS...``.

Imported by a spawned hypercorn worker too (``liveloop.app:app`` is reached through
``tests.crashing_server:app`` there), so the patch applies in every process that has
``CRASH_MATCHMAKER=1`` in its environment (and never in the test process itself).
"""

from __future__ import annotations

import os
import sys

from liveloop import matchmaker
from liveloop.app import app as app  # what the hypercorn worker serves

MARKER = "the matchmaker was made to crash"


async def _crash(self: matchmaker.Matchmaker, message: object) -> None:
    raise RuntimeError(MARKER)


if os.environ.get("CRASH_MATCHMAKER") == "1":
    matchmaker.Matchmaker._handle = _crash  # type: ignore[method-assign]

if __name__ == "__main__":
    host, *args = sys.argv[1:]
    if host == "liveloop":
        from liveloop.cli import main as liveloop_main

        sys.exit(liveloop_main(args))
    from hypercorn.__main__ import main as hypercorn_main

    sys.exit(hypercorn_main(args))
