"""ICE servers for ``get-ice-servers``: STUN URLs, and TURN with short-lived credentials.

TURN credentials follow the TURN REST API scheme (draft-uberti-behave-turn-rest) that
coturn checks in its ``use-auth-secret`` mode:

- username: ``"<expiry unix time>:<id>"``, where ``id`` is a random id made for one
  connection (never the typed name, never the socket id, so a credential seen by the
  partner, or in coturn's log, says nothing about who holds it);
- credential: base64 of HMAC-SHA1(secret, username).

coturn recomputes the HMAC with its own copy of the secret and refuses a username whose
expiry has passed, so the server never tells coturn anything and the secret itself never
leaves this process (it is kept out of ``repr`` and logs).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from .config import Settings


def turn_username(expiry: int, connection_id: str) -> str:
    """The TURN REST API username for a credential valid until ``expiry`` (unix time)."""
    return f"{expiry}:{connection_id}"


def turn_password(secret: bytes, username: str) -> str:
    """The TURN REST API credential: base64(HMAC-SHA1(secret, username))."""
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def new_connection_id() -> str:
    """A random id for one connection's TURN usernames (96 bits, URL-safe)."""
    return secrets.token_urlsafe(12)


def read_secret(settings: Settings) -> bytes:
    """The TURN secret: ``turn_secret_file``'s first line if set, else ``turn_secret``.

    Raises ``ValueError`` when TURN URLs are configured without a secret (every client
    would otherwise be handed credentials coturn refuses), or the file is empty.
    """
    secret = settings.turn_secret
    if settings.turn_secret_file:
        lines = Path(settings.turn_secret_file).read_text(encoding="utf-8").splitlines()
        secret = lines[0].strip() if lines else ""
        if not secret:
            raise ValueError(f"turn_secret_file {settings.turn_secret_file} is empty")
    if settings.turn_urls and not secret:
        raise ValueError("turn_urls is set but no turn_secret or turn_secret_file")
    return secret.encode()


@attrs.frozen
class IceServers:
    """What ``get-ice-servers`` answers, built once from the settings at startup."""

    stun_urls: tuple[str, ...]
    turn_urls: tuple[str, ...]
    secret: bytes = attrs.field(repr=False)
    ttl: int
    wall_clock: Callable[[], float] = attrs.field(default=time.time, eq=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings,
                      wall_clock: Callable[[], float] = time.time) -> IceServers:
        """Read the secret (from its file if one is named) and keep what answers need."""
        if settings.turn_ttl <= 0:
            raise ValueError("turn_ttl must be positive")
        return cls(settings.stun_urls, settings.turn_urls, read_secret(settings),
                   settings.turn_ttl, wall_clock)

    def answer(self, connection_id: str) -> dict[str, Any]:
        """``{iceServers: [RTCIceServer...], ttl}`` for one connection.

        STUN servers come first, then TURN with a fresh credential valid ``ttl`` seconds
        from now; with no TURN the list holds only STUN, and with neither it is empty.
        """
        servers: list[dict[str, Any]] = []
        if self.stun_urls:
            servers.append({"urls": list(self.stun_urls)})
        if self.turn_urls:
            expiry = math.floor(self.wall_clock()) + self.ttl
            username = turn_username(expiry, connection_id)
            servers.append({"urls": list(self.turn_urls), "username": username,
                            "credential": turn_password(self.secret, username)})
        return {"iceServers": servers, "ttl": self.ttl}
