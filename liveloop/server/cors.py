"""Which browser origins may talk to the Engine.IO endpoint.

``allowed_origins`` is a list of exact origins (``https://app.example``) or ``*``. Empty
means same origin only: the ``Origin`` header's host must equal the ``Host`` header.
A request without ``Origin`` is not from a browser page and is always allowed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .asgi import Headers, Scope, header


class OriginPolicy:
    def __init__(self, allowed: tuple[str, ...]) -> None:
        self._any = "*" in allowed
        self._allowed = frozenset(o.rstrip("/").lower() for o in allowed if o != "*")

    def allows(self, scope: Scope) -> bool:
        """Whether a request with this scope's Origin (if any) may be served."""
        origin = header(scope, b"origin")
        if origin is None or self._any:
            return True
        text = origin.decode("latin-1").rstrip("/").lower()
        if text in self._allowed:
            return True
        if self._allowed:
            return False
        host = header(scope, b"host")
        return host is not None and urlsplit(text).netloc == host.decode("latin-1").lower()

    def headers(self, scope: Scope) -> Headers:
        """CORS response headers for an allowed cross-origin request; empty otherwise."""
        origin = header(scope, b"origin")
        if origin is None or not self.allows(scope):
            return []
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"),
            (b"vary", b"Origin"),
        ]

    def preflight_headers(self, scope: Scope) -> Headers:
        """Headers answering an OPTIONS preflight."""
        out = self.headers(scope)
        if not out:
            return out
        out.append((b"access-control-allow-methods", b"GET, POST, OPTIONS"))
        requested = header(scope, b"access-control-request-headers")
        if requested:
            out.append((b"access-control-allow-headers", requested))
        out.append((b"access-control-max-age", b"86400"))
        return out
