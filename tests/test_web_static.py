"""The web client's files: how ``/app/`` serves them, the vendored socket.io-client bundle
against the pinned npm package, and that a wheel built from the tracked files holds them."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import trio

from liveloop.app import create_app
from liveloop.config import Settings
from liveloop.server.static import POLICY, web_files

from .conftest import http_get, start_server

ROOT = Path(__file__).parent.parent
VENDOR = ROOT / "liveloop" / "web" / "vendor" / "socket.io-client"
NPM = ROOT / "tests" / "js" / "node_modules" / "socket.io-client"
PAGE_FILES = {"index.html", "app.js", "call.js", "media.js", "app.css",
              "vendor/socket.io-client/socket.io.esm.min.js",
              "vendor/socket.io-client/LICENSE.txt", "vendor/socket.io-client/README.txt"}


def test_vendored_bundle_is_the_pinned_npm_package_file() -> None:
    pinned = json.loads((ROOT / "tests" / "js" / "package.json").read_text())
    version = pinned["dependencies"]["socket.io-client"]
    installed = json.loads((NPM / "package.json").read_text())["version"]
    assert installed == version
    bundle = (VENDOR / "socket.io.esm.min.js").read_bytes()
    assert bundle == (NPM / "dist" / "socket.io.esm.min.js").read_bytes()
    assert f"Socket.IO v{version}".encode() in bundle[:200]
    assert f"socket.io-client {version}" in (VENDOR / "README.txt").read_text()
    assert (VENDOR / "LICENSE.txt").read_bytes() == (NPM / "LICENSE").read_bytes()
    assert b"MIT" in (VENDOR / "LICENSE.txt").read_bytes()


def test_the_page_names_every_control_the_tests_rely_on() -> None:
    page = (ROOT / "liveloop" / "web" / "index.html").read_text()
    for button in ("Start", "Next", "Stop", "Mute", "Camera off", "Send"):
        assert f">{button}</button>" in page
    for label in ('for="name">Name<', 'for="message">Message<', 'aria-label="You"',
                  'aria-label="Stranger"', 'aria-pressed="false" disabled>Mute',
                  'aria-pressed="false" disabled>Camera off'):
        assert label in page
    assert set(web_files()) == PAGE_FILES


async def get(url: str, path: str, **headers: str) -> Any:
    parts = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(parts[0], int(parts[1]))
    request = f"{headers.pop('method', 'GET')} {path} HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items()) + "Connection: close\r\n\r\n"
    async with stream:
        await stream.send_all(request.encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), fields, body


async def test_app_is_served_beside_the_health_check(nursery: trio.Nursery) -> None:
    settings = Settings(bind="127.0.0.1:0")
    url = await start_server(nursery, create_app(settings), settings)
    assert (await http_get(url, "/")).json() == {"status": "OK", "message": "Hello, TypeScript!"}
    status, fields, _ = await get(url, "/app")
    assert (status, fields["location"]) == (308, "/app/")
    status, fields, body = await get(url, "/app/")
    assert status == 200 and fields["content-type"] == "text/html; charset=utf-8"
    assert fields["content-security-policy"] == POLICY.decode()
    assert b'<script type="module" src="app.js">' in body
    status, fields, body = await get(url, "/app/vendor/socket.io-client/socket.io.esm.min.js")
    assert status == 200 and fields["content-type"].startswith("text/javascript")
    assert body == (VENDOR / "socket.io.esm.min.js").read_bytes()
    status, _, body = await get(url, "/app/app.js", if_none_match=fields["etag"])
    assert status == 200  # another file's tag
    status, _, body = await get(url, "/app/vendor/socket.io-client/socket.io.esm.min.js",
                                if_none_match=fields["etag"])
    assert (status, body) == (304, b"")
    status, fields, body = await get(url, "/app/app.css", method="HEAD")
    assert status == 200 and body == b"" and int(fields["content-length"]) > 100
    for missing in ("/app/nope.js", "/app/../pyproject.toml", "/app/%2e%2e/config.py",
                    "/app/vendor", "/app/vendor/socket.io-client/../../app.js"):
        assert (await get(url, missing))[0] == 404, missing
    assert (await get(url, "/app/", method="POST"))[0] == 405


def test_a_wheel_of_the_tracked_files_carries_the_page(tmp_path: Path) -> None:
    """What `pip install .` from a clean clone installs: the page and the bundle."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    source = tmp_path / "src"
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True,
                   timeout=300)
    (wheel,) = (tmp_path / "dist").glob("liveloop-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"liveloop/web/{name}" for name in PAGE_FILES} <= names
