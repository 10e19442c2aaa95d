"""HTTPS: ``liveloop serve --certfile --keyfile`` terminates TLS itself, for what the front
door serves and what it hands to hypercorn (polling, REST, the page, and WebSockets, which
over TLS go through hypercorn); ``hypercorn -k trio`` with its own ``--certfile`` serves the
same app. The certificate is made in the test (trustme: a throwaway CA)."""

from __future__ import annotations

import contextlib
import json
import ssl
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme
from trio_websocket import open_websocket_url

from liveloop.app import create_app
from liveloop.config import Settings
from liveloop.serve import hypercorn_config

from .conftest import start_server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certificate(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def https_get(host: str, port: int, context: ssl.SSLContext, target: str
                    ) -> tuple[int, bytes]:
    """One GET over TLS (verified against ``context``); status and body."""
    stream = trio.SSLStream(await trio.open_tcp_stream(host, port), context,
                            server_hostname=host, https_compatible=True)
    async with stream:
        await stream.send_all(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def split(url: str) -> tuple[str, int]:
    host, port = url.split("://")[1].rsplit(":", 1)
    return host, int(port)


async def test_liveloop_serve_speaks_https_and_wss(
        nursery: trio.Nursery, ca: trustme.CA, certificate: tuple[str, str]) -> None:
    certfile, keyfile = certificate
    settings = Settings(bind="127.0.0.1:0", certfile=certfile, keyfile=keyfile)
    url = await start_server(nursery, create_app(settings), settings)
    assert url.startswith("https://127.0.0.1:")
    host, port = split(url)
    context = client_context(ca)
    with trio.fail_after(10):
        status, body = await https_get(host, port, context, "/")
        assert (status, json.loads(body)["status"]) == (200, "OK")
        status, body = await https_get(host, port, context, "/app/")
        assert status == 200 and b"<title>Live Loop</title>" in body
        status, body = await https_get(host, port, context, "/socket.io/?EIO=4&transport=polling")
        assert status == 200 and body.startswith(b"0{")
        ws_url = f"wss://{host}:{port}/socket.io/?EIO=4&transport=websocket"
        async with open_websocket_url(ws_url, ssl_context=context) as ws:
            message = await ws.get_message()
            assert isinstance(message, str) and message.startswith("0{")
            await ws.send_message("40")
            message = await ws.get_message()
            assert isinstance(message, str) and message.startswith("40{")
        # Plain HTTP to the TLS port gets no HTTP answer; the server goes on serving.
        stream = await trio.open_tcp_stream(host, port)
        answer = b""
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(trio.BrokenResourceError):
                while chunk := await stream.receive_some(1024):
                    answer += chunk
        assert not answer.startswith(b"HTTP/")
        status, _ = await https_get(host, port, context, "/")
        assert status == 200


def test_certfile_without_keyfile_is_refused() -> None:
    with pytest.raises(ValueError, match="both or neither"):
        hypercorn_config(Settings(certfile="cert.pem"))


async def test_hypercorn_with_its_certificate_serves_https(
        ca: trustme.CA, certificate: tuple[str, str], tmp_path: Path) -> None:
    certfile, keyfile = certificate
    hypercorn = Path(sys.executable).parent / "hypercorn"
    port_holder = trio.socket.socket()
    await port_holder.bind(("127.0.0.1", 0))
    port = port_holder.getsockname()[1]
    port_holder.close()
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(partial(
            trio.run_process,
            [str(hypercorn), "-k", "trio", "--bind", f"127.0.0.1:{port}",
             "--certfile", certfile, "--keyfile", keyfile, "liveloop.app:app"], check=False))
        try:
            with trio.fail_after(30):
                while True:  # a process we don't control: poll until it answers
                    try:
                        status, body = await https_get("127.0.0.1", port,
                                                       client_context(ca), "/app/")
                        break
                    except OSError:
                        await trio.sleep(0.05)
            assert status == 200 and b"<title>Live Loop</title>" in body
        finally:
            process.terminate()


async def test_connections_per_address_over_tls(
        nursery: trio.Nursery, ca: trustme.CA, certificate: tuple[str, str]) -> None:
    """The count is the socket peer's, taken before the TLS handshake: one over the limit
    is closed before it (no plaintext answer on a TLS connection)."""
    certfile, keyfile = certificate
    settings = Settings(bind="127.0.0.1:0", certfile=certfile, keyfile=keyfile,
                        max_connections_per_ip=1, header_timeout=600.0)
    url = await start_server(nursery, create_app(settings), settings)
    host, port = split(url)
    context = client_context(ca)
    held = trio.SSLStream(await trio.open_tcp_stream(host, port), context,
                          server_hostname=host, https_compatible=True)
    async with held:
        with trio.fail_after(10):
            await held.do_handshake()
            with pytest.raises(trio.BrokenResourceError):
                await https_get(host, port, context, "/")
