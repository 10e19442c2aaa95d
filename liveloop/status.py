"""What ``GET /api/status`` shows, read without disturbing any actor.

The matchmaker publishes an immutable :class:`Snapshot` after every change; readers take
the current one synchronously. It holds display names only: never socket ids or images.
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs


@attrs.frozen
class Snapshot:
    """The matchmaker's counts at one moment."""

    queue_size: int = 0
    queue_users: tuple[str, ...] = ()
    """Names of the longest-waiting people, at most ``settings.status_users`` of them."""
    rooms_active: int = 0
    rooms_total: int = 0
    """Rooms created since the start."""


def status_json(snapshot: Snapshot, now: datetime.datetime | None = None) -> dict[str, Any]:
    """The seed's status document: ``{queue: {size, users}, rooms: {active, total},
    timestamp}``, the timestamp in ISO 8601 UTC (``2025-01-17T10:00:00Z``)."""
    moment = now if now is not None else datetime.datetime.now(datetime.UTC)
    return {
        "queue": {"size": snapshot.queue_size, "users": list(snapshot.queue_users)},
        "rooms": {"active": snapshot.rooms_active, "total": snapshot.rooms_total},
        "timestamp": moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
