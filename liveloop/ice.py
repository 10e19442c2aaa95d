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
import logging
import math
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Settings

log = logging.getLogger(__name__)


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
        secret = _first_line(Path(settings.turn_secret_file))
        if not secret:
            raise ValueError(f"turn_secret_file {settings.turn_secret_file} is empty")
    if settings.turn_urls and not secret:
        raise ValueError("turn_urls is set but no turn_secret or turn_secret_file")
    return secret.encode()


def _first_line(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0].strip() if lines else ""


class IceServers:
    """What ``get-ice-servers`` answers, built once from the settings at startup.

    A secret given by file is read again when the file changes (its modification time),
    so rotating the secret needs no restart (docs/turn.md). A file that cannot be read
    or is empty then keeps the secret in use, and says so in the log (never the secret).
    """

    def __init__(self, stun_urls: tuple[str, ...], turn_urls: tuple[str, ...],
                 secret: bytes, ttl: int, *, secret_file: str = "",
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.stun_urls = stun_urls
        self.turn_urls = turn_urls
        self._secret = secret
        self.ttl = ttl
        self._file = Path(secret_file) if secret_file else None
        self._stamp = self._file_stamp()
        self._wall_clock = wall_clock

    def __repr__(self) -> str:  # the secret stays out
        return f"IceServers(stun={self.stun_urls!r}, turn={self.turn_urls!r}, ttl={self.ttl})"

    @classmethod
    def from_settings(cls, settings: Settings,
                      wall_clock: Callable[[], float] = time.time) -> IceServers:
        """Read the secret (from its file if one is named) and keep what answers need."""
        if settings.turn_ttl <= 0:
            raise ValueError("turn_ttl must be positive")
        return cls(settings.stun_urls, settings.turn_urls, read_secret(settings),
                   settings.turn_ttl, secret_file=settings.turn_secret_file,
                   wall_clock=wall_clock)

    @property
    def secret(self) -> bytes:
        """The secret in use, re-read first if its file has changed."""
        stamp = self._file_stamp()
        if stamp != self._stamp and self._file is not None:
            self._stamp = stamp
            try:
                fresh = _first_line(self._file)
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("TURN secret file %s unreadable (%s); keeping the secret in use",
                            self._file, type(exc).__name__)
            else:
                if fresh:
                    self._secret = fresh.encode()
                    log.info("TURN secret file %s changed: new credentials use it", self._file)
                else:
                    log.warning("TURN secret file %s is empty; keeping the secret in use",
                                self._file)
        return self._secret

    def _file_stamp(self) -> int | None:
        if self._file is None:
            return None
        try:
            return self._file.stat().st_mtime_ns
        except OSError:
            return None

    def answer(self, connection_id: str) -> dict[str, Any]:
        """``{iceServers: [RTCIceServer...], ttl}`` for one connection.

        STUN servers come first, then TURN with a fresh credential valid ``ttl`` seconds
        from now; with no TURN the list holds only STUN, and with neither it is empty.
        """
        servers: list[dict[str, Any]] = []
        if self.stun_urls:
            servers.append({"urls": list(self.stun_urls)})
        if self.turn_urls:
            expiry = math.floor(self._wall_clock()) + self.ttl
            username = turn_username(expiry, connection_id)
            servers.append({"urls": list(self.turn_urls), "username": username,
                            "credential": turn_password(self.secret, username)})
        return {"iceServers": servers, "ttl": self.ttl}
