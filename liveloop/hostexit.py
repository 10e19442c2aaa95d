"""A failure status for a failed start or a crash, under the servers that host Live Loop.

``liveloop serve``, ``hypercorn --workers 0`` and uvicorn run the app in the process the
user started, whose status we set: :func:`exit_now` ends it. hypercorn's default
(``hypercorn liveloop.app:app`` runs one worker, spawned by a parent process) cannot give
one: hypercorn 0.18's parent re-reads its workers' statuses after it has forgotten the
worker that ended, and exits 0 whatever that worker did. The only status it can still
give is that of a process ended by a signal, so :func:`fail_host` ends that parent with
SIGKILL, when this process is its only worker (with several, the others would be left
without a parent, so the parent is left alone: docs/operations.md).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)


def _cmdline(pid: int | str) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def hypercorn_parent() -> int | None:
    """The pid of hypercorn's parent process if this process is the one worker it spawned,
    else None (not under hypercorn, ``--workers 0``, several workers, or no Linux
    ``/proc`` to tell)."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return None
    try:
        if not any(os.path.basename(arg) == b"hypercorn" for arg in _cmdline(parent.pid)):
            return None
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        workers = [pid for pid in children if b"--multiprocessing-fork" in _cmdline(pid)]
    except OSError:
        return None
    return parent.pid if workers == [str(os.getpid())] else None


def fail_host() -> None:
    """Make the process the user started end with a failure status if the server would
    not (hypercorn's parent: see the module docstring); call after logging why."""
    pid = hypercorn_parent()
    if pid is not None:
        log.critical("ending hypercorn's parent process (pid %d) with SIGKILL: hypercorn "
                     "would exit 0", pid)
        os.kill(pid, signal.SIGKILL)


def exit_now(status: int) -> None:
    """End the process now with ``status`` (and hypercorn's parent with it), the reason
    being logged already."""
    fail_host()
    logging.shutdown()
    os._exit(status)
