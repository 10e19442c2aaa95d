"""Which browser origins may talk to the Engine.IO endpoint.

``allowed_origins`` is a list of exact origins (``https://app.example``) or ``*``. Empty
means same origin only: the ``Origin`` header's host and port must be the ``Host``
header's, a port left out standing for its scheme's default on both sides (so a page at
``https://a`` reaches a server behind a TLS proxy that passes ``Host: a:443`` or
``Host: a``). A request without ``Origin`` is not from a browser page and is always
allowed.

With ``*``, answers carry a literal ``Access-Control-Allow-Origin: *`` and no
``Access-Control-Allow-Credentials``: any page may talk to the server, but a browser then
sends no cookies or HTTP auth with the request. Only listed origins get credentials.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .asgi import Headers, Scope, header

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) names the server that ``host`` (a
    ``Host`` header: ``host[:port]``) names; a missing port is the Origin scheme's
    default on both sides. Anything unparsable is not the same origin."""
    try:
        page = urlsplit(origin)
        server = urlsplit("//" + host)
        default = _DEFAULT_PORTS.get(page.scheme)
        if default is None or not page.hostname or not server.hostname:
            return False
        if page.path or page.query or page.fragment or page.username is not None:
            return False  # not an origin
        return (page.hostname == server.hostname
                and (page.port or default) == (server.port or default))
    except ValueError:  # a port that is not a number, or out of range
        return False


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
        return host is not None and same_origin(text, host.decode("latin-1").lower())

    def headers(self, scope: Scope) -> Headers:
        """CORS response headers for an allowed cross-origin request; empty otherwise."""
        origin = header(scope, b"origin")
        if origin is None or not self.allows(scope):
            return []
        if self._any:
            return [(b"access-control-allow-origin", b"*")]
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
