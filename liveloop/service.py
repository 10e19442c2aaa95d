"""Live Loop, the service: the matchmaker (and its rooms) plus the namespace for ``/``.

The server layer builds ``LiveLoop(settings)``, starts :meth:`LiveLoop.run` in its root
nursery (``await nursery.start(service.run)``), registers :attr:`LiveLoop.namespace` for
``/`` and serves :meth:`LiveLoop.status` at ``GET /api/status``.
"""

from __future__ import annotations

from typing import Any

import trio

from .config import Settings
from .ice import IceServers
from .metrics import Metrics
from .peer import LiveLoopNamespace, Relocation
from .server.recovery import RecoveryStore
from .shared import SharedState, shared_state
from .status import Snapshot, status_json


class LiveLoop:
    """The Live Loop domain, built from :class:`~liveloop.config.Settings`."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics(enabled=False)
        self.matchmaker: SharedState = shared_state(settings, self.metrics)
        relocation = self.matchmaker if isinstance(self.matchmaker, Relocation) else None
        self._namespace = LiveLoopNamespace(settings, self.matchmaker.mailbox,
                                            self._snapshot, metrics=self.metrics,
                                            ice=IceServers.from_settings(settings),
                                            confirm=self.matchmaker.confirms,
                                            relocation=relocation)
        self.metrics.watch(self._snapshot)

    def recovery_store(self) -> RecoveryStore | None:
        """Where connection state recovery records live: with Redis, a store whose
        records another node can claim (docs/cluster.md); else None (in process)."""
        make = getattr(self.matchmaker, "recovery_store", None)
        store: RecoveryStore | None = make() if make is not None else None
        return store

    def _snapshot(self) -> Snapshot:
        return self.matchmaker.snapshot

    @property
    def namespace(self) -> LiveLoopNamespace:
        """The :class:`~liveloop.server.api.Namespace` to register for ``/``."""
        return self._namespace

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run the matchmaker and its rooms until cancelled; ready once ``started``.

        A matchmaker crash propagates out of here: the host logs it at CRITICAL and the
        process exits non-zero (:func:`liveloop.cli.main`, :class:`liveloop.app.RootApp`);
        a room's crash does not.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.matchmaker.run)
            task_status.started()

    def status(self) -> dict[str, Any]:
        """The ``GET /api/status`` document from the last snapshot; never waits."""
        return status_json(self.matchmaker.snapshot)

    async def fetch_status(self) -> dict[str, Any]:
        """The ``GET /api/status`` document for the whole service (with Redis: read
        there now; in memory: the snapshot)."""
        return status_json(await self.matchmaker.current())
