"""The ways to start the server: `liveloop serve`, `python -m liveloop`, hypercorn's
workers and uvicorn, each exactly as a user types it (plus where to listen)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from .hosts import GUEST_ENTRIES, Entry

BIN = Path(sys.executable).parent


async def http_get(stream: trio.abc.Stream, target: str) -> tuple[int, bytes]:
    """One GET over ``stream``; reads exactly the response (by Content-Length)."""
    async with stream:
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += await stream.receive_some(65536)
    return int(head.split()[1]), body


async def http_get_unix(path: str, target: str) -> tuple[int, bytes]:
    return await http_get(await trio.open_unix_socket(path), target)


async def check_serves(sock: Path) -> None:
    """The app answers on ``sock``: its hello route, its status, an Engine.IO handshake."""
    status, body = await http_get_unix(str(sock), "/")
    assert (status, json.loads(body)) == (200, {"status": "OK", "message": "Hello, TypeScript!"})
    status, body = await http_get_unix(str(sock), "/api/status")
    assert status == 200 and json.loads(body)["queue"]["size"] == 0
    status, body = await http_get_unix(str(sock), "/socket.io/?EIO=4&transport=polling")
    assert status == 200 and body.startswith(b"0{")


async def wait_for_socket(path: Path, process: trio.Process) -> None:
    """Poll until the server accepts on ``path`` (a process we don't control can't
    signal readiness otherwise)."""
    with trio.fail_after(30):
        while True:
            assert process.returncode is None, "the server exited early"
            try:
                stream = await trio.open_unix_socket(str(path))
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


@pytest.fixture(params=[pytest.param(entry, id=entry.name, marks=pytest.mark.skipif(
    not entry.available, reason=f"{entry.name}: not installed")) for entry in GUEST_ENTRIES])
def entry(request: pytest.FixtureRequest) -> Entry:
    """Each server that runs the Trio side as a guest on asyncio."""
    value: Entry = request.param
    return value


def on_unix_socket(entry: Entry, sock: Path, app: str = "liveloop.app:app") -> list[str]:
    """The entry's command as the user types it, told to listen on ``sock``."""
    program, *flags = entry.command(app)
    if entry.name == "uvicorn":
        return [program, "--uds", str(sock), app]
    return [program, "--bind", f"unix:{sock}", *flags[flags.index("--graceful-timeout"):]]


async def test_the_users_command_serves_as_a_guest_on_asyncio(entry: Entry, tmp_path: Path
                                                             ) -> None:
    """``hypercorn liveloop.app:app`` (asyncio, uvloop) and ``uvicorn liveloop.app:app``."""
    sock = tmp_path / "s.sock"
    async with trio.open_nursery() as nursery:
        process = await nursery.start(partial(
            trio.run_process, on_unix_socket(entry, sock), check=False))
        try:
            await wait_for_socket(sock, process)
            await check_serves(sock)
        finally:
            process.terminate()
        # a clean shutdown; uvicorn re-raises the signal once it has finished
        assert await process.wait() in (0, -signal.SIGTERM)


async def test_a_crash_of_the_trio_side_stops_the_server(entry: Entry, tmp_path: Path
                                                         ) -> None:
    """The host would go on serving; the Trio side logs at CRITICAL and ends the process
    with status 1."""
    sock = tmp_path / "s.sock"
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(partial(
            trio.run_process, on_unix_socket(entry, sock, "tests.crashapp:app"),
            check=False, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL))
        assert process.stderr is not None
        await wait_for_socket(sock, process)
        assert (await http_get_unix(str(sock), "/"))[0] == 200
        async with await trio.open_unix_socket(str(sock)) as stream:
            # no answer awaited: it may never be complete, since the app is crashing
            await stream.send_all(b"GET /crash HTTP/1.1\r\nHost: test\r\n\r\n")
        output = b""
        with trio.fail_after(60):
            async for chunk in process.stderr:
                output += chunk
            await process.wait()
    assert b"the Trio side crashed; stopping the server" in output
    assert b"ActorCrashed" in output
    assert process.returncode == failure_status(entry, 1)


def failure_status(entry: Entry, ours: int) -> int:
    """The status the user's command ends with after a failed start or a crash: uvicorn
    and ``liveloop serve`` give ``ours`` (uvicorn: 3 for a failed start); hypercorn's
    parent, which would exit 0, is ended by SIGKILL (``liveloop/hostexit.py``)."""
    return ours if entry.name == "uvicorn" else -signal.SIGKILL


async def test_a_failed_start_says_why(entry: Entry, tmp_path: Path) -> None:
    """Bad settings: the start fails, naming them, and the command exits non-zero."""
    with trio.fail_after(60):
        result = await trio.run_process(
            on_unix_socket(entry, tmp_path / "s.sock"),
            env={**os.environ, "LIVELOOP_PING_INTERVAL": "soon"},
            capture_stdout=True, capture_stderr=True, check=False)
    output = (result.stdout + result.stderr).decode()
    assert "Live Loop cannot start: could not convert string to float: 'soon'" in output
    assert result.returncode == failure_status(entry, 3), output


@pytest.mark.parametrize(("flags", "status"), [
    pytest.param(["-k", "trio"], -signal.SIGKILL, id="trio worker"),
    pytest.param(["--workers", "0"], 1, id="no worker process"),
    pytest.param(["--workers", "2"], 0, id="two workers: hypercorn's own 0"),
])
async def test_a_failed_start_under_hypercorn_exits(flags: list[str], status: int,
                                                   tmp_path: Path) -> None:
    """hypercorn's other shapes: its parent is ended only when it has a single worker
    (with two, the other would be orphaned, and hypercorn's 0 stands)."""
    with trio.fail_after(60):
        result = await trio.run_process(
            [str(BIN / "hypercorn"), *flags, "--bind", f"unix:{tmp_path / 's.sock'}",
             "liveloop.app:app"],
            env={**os.environ, "LIVELOOP_PING_INTERVAL": "soon"},
            capture_stdout=True, capture_stderr=True, check=False)
    output = (result.stdout + result.stderr).decode()
    assert "Live Loop cannot start" in output
    assert result.returncode == status, output


async def test_hypercorn_trio_worker_serves(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    async with trio.open_nursery() as nursery:
        process = await nursery.start(partial(
            trio.run_process,
            [str(BIN / "hypercorn"), "-k", "trio", "--bind", f"unix:{sock}",
             "liveloop.app:app"], check=False,
        ))
        try:
            await wait_for_socket(sock, process)
            await check_serves(sock)
            status, body = await http_get_unix(str(sock), "/app/")  # the web client
            assert status == 200 and b"<title>Live Loop</title>" in body
        finally:
            process.terminate()
        assert await process.wait() == 0  # SIGTERM is a clean shutdown


async def test_python_m_liveloop_serve_reads_settings_from_env_and_flags() -> None:
    env = {**os.environ, "LIVELOOP_PING_INTERVAL": "7"}
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [sys.executable, "-m", "liveloop", "serve", "--bind", "127.0.0.1:0",
                 "--max-payload", "4321"],
                env=env, stderr=subprocess.PIPE, check=False,
            )
        )
        try:
            assert process.stderr is not None
            seen = b""
            with trio.fail_after(30):
                while b"listening on" not in seen:
                    seen += await process.stderr.receive_some(4096)
            url = seen.split(b"listening on ")[1].split()[0].decode().rstrip(",")
            host, port = url.removeprefix("http://").rsplit(":", 1)
            stream = await trio.open_tcp_stream(host, int(port))
            _, body = await http_get(stream, "/socket.io/?EIO=4&transport=polling")
            opened = json.loads(body[1:])
            assert opened["pingInterval"] == 7000
            assert opened["maxPayload"] == 4321
        finally:
            process.terminate()


async def test_hypercorn_trio_worker_survives_malformed_chunked_bodies() -> None:
    """hypercorn ends a connection outside its send lock: its 400 for a broken chunked
    body and the app task's EOF collided (BusyResourceError), which ended the worker."""
    listener = socket.create_server(("127.0.0.1", 0))  # handed to hypercorn as fd://
    port = listener.getsockname()[1]
    chunked = b" HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    requests = [b"GET /" + chunked,  # Quart's route
                b"POST /socket.io/?EIO=4&transport=polling&sid=x" + chunked]  # Engine.IO's

    async def attack(count: int) -> None:
        for i in range(count):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(requests[i % 2])
                with contextlib.suppress(trio.BrokenResourceError):
                    while await stream.receive_some(65536):
                        pass

    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(partial(
            trio.run_process,
            [str(BIN / "hypercorn"), "-k", "trio", "--bind", f"fd://{listener.fileno()}",
             "liveloop.app:app"], check=False, stderr=subprocess.PIPE,
            pass_fds=(listener.fileno(),),
        ))
        listener.close()
        try:
            with trio.fail_after(60):
                async with trio.open_nursery() as attackers:
                    for _ in range(4):
                        attackers.start_soon(attack, 250)
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                status, _ = await http_get(stream, "/")
            assert status == 200
            assert process.returncode is None
        finally:
            process.terminate()
        assert await process.wait() == 0
        assert process.stderr is not None
        log = b""
        while chunk := await process.stderr.receive_some(65536):
            log += chunk
    assert b"Traceback" not in log and b"[ERROR]" not in log, log.decode()[-3000:]


WSGI_SERVER = """
import sys
from wsgiref.simple_server import make_server
from liveloop.app import app
server = make_server("127.0.0.1", 0, app)
print(server.server_port, flush=True)
server.handle_request()
server.handle_request()
"""


async def test_a_wsgi_server_gets_a_500_naming_the_commands_that_work() -> None:
    """Under the standard library's WSGI server (as under gunicorn's sync worker) the app
    answers 500 with the commands that work, and logs them at CRITICAL, once."""
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(partial(
            trio.run_process, [sys.executable, "-c", WSGI_SERVER], check=False,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        assert process.stdout is not None and process.stderr is not None
        with trio.fail_after(30):
            port = int((await process.stdout.receive_some(100)).decode())
            answers = [await http_get(await trio.open_tcp_stream("127.0.0.1", port), path)
                       for path in ("/socket.io/?EIO=4&transport=polling", "/")]
            output = b""
            async for chunk in process.stderr:
                output += chunk
            assert await process.wait() == 0
    for status, body in answers:
        assert status == 500
        assert b"called it as a WSGI application" in body
        for command in (b"`liveloop serve`", b"`hypercorn liveloop.app:app`",
                        b"`uvicorn liveloop.app:app`"):
            assert command in body
    log = output.decode()
    assert log.count("called it as a WSGI application") == 1, log  # the first call only
    assert "TypeError" not in log and "Traceback" not in log, log


def test_asgi_servers_still_see_an_asgi3_app() -> None:
    """hypercorn's and uvicorn's own detection, as they run on ``liveloop.app:app``."""
    from hypercorn.utils import is_asgi
    from uvicorn.config import Config

    from liveloop.app import app

    assert is_asgi(app)
    config = Config(app, interface="auto")
    config.load()
    assert config.interface == "asgi3"
