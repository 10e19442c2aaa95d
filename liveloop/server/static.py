"""The web client's files at ``/app/``, as a plain ASGI app in front of another.

The files are small (the page, its modules and the socket.io-client bundle, about 60 KB)
and never change while the server runs, so they are read once, when the app is built, and
served from memory: no file system access per request, no path ever built from a URL (a
request names a key of a dict or gets 404), and the same behaviour under every entry
point (``liveloop serve``, ``hypercorn -k trio``, an asyncio host) because nothing here
awaits anything but ``send``.

``/app`` redirects to ``/app/``; ``/app/`` is ``index.html``. Anything outside the prefix
goes to the wrapped app. Only GET and HEAD are answered (405 otherwise).
"""

from __future__ import annotations

import hashlib
from importlib import resources
from importlib.resources.abc import Traversable

import attrs

from .asgi import ASGIApp, Headers, Receive, Scope, Send, header, respond

TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".txt": b"text/plain; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
}
"""Served file types; a file of another type in the folder is not served."""

# The page loads only its own files; it talks to its own origin (ws/wss included: CSP3's
# 'self' matches them), and shows data: thumbnails and camera streams.
POLICY = (b"default-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; "
          b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


@attrs.frozen
class File:
    body: bytes
    content_type: bytes
    etag: bytes


def load(root: Traversable, prefix: str = "") -> dict[str, File]:
    """Every servable file under ``root``, by its path relative to it (``/`` joined)."""
    files: dict[str, File] = {}
    for entry in root.iterdir():
        name = prefix + entry.name
        if entry.is_dir():
            files.update(load(entry, name + "/"))
            continue
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        content_type = TYPES.get(suffix)
        if content_type is not None:
            body = entry.read_bytes()
            etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'
            files[name] = File(body, content_type, etag)
    return files


def web_files() -> dict[str, File]:
    """The web client shipped in the package (``liveloop/web``)."""
    return load(resources.files("liveloop") / "web")


class StaticMount:
    """Serves ``files`` under ``prefix`` (``/app``), everything else by ``fallback``."""

    def __init__(self, prefix: str, files: dict[str, File], fallback: ASGIApp) -> None:
        self._prefix = prefix.rstrip("/")
        self._files = files
        self._fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (
                path == self._prefix or path.startswith(self._prefix + "/")):
            await self._fallback(scope, receive, send)
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await respond(send, 405, b"Method Not Allowed", [(b"allow", b"GET, HEAD")])
            return
        if path == self._prefix:
            await respond(send, 308, b"", [(b"location", self._prefix.encode() + b"/")])
            return
        name = path[len(self._prefix) + 1:] or "index.html"
        found = self._files.get(name)
        if found is None:
            await respond(send, 404, b"Not Found", [])
            return
        headers: Headers = [
            (b"etag", found.etag), (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"),
        ]
        if found.content_type.startswith(b"text/html"):
            headers += [(b"content-security-policy", POLICY),
                        (b"referrer-policy", b"no-referrer")]
        if header(scope, b"if-none-match") == found.etag:
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b"" if scope["method"] == "HEAD" else found.body
        await send({"type": "http.response.start", "status": 200, "headers": [
            *headers, (b"content-type", found.content_type),
            (b"content-length", str(len(found.body)).encode())]})
        await send({"type": "http.response.body", "body": body})
