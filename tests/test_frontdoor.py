"""The front door: its pin on hypercorn (it uses hypercorn's private interfaces, so it
runs only on the versions it was checked against), and the stream it hands to hypercorn."""

from __future__ import annotations

import contextlib
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import trio
import trio.testing

from liveloop.server.frontdoor import HYPERCORN_VERSIONS, _Replay


def _parse(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_installed_hypercorn_is_one_the_front_door_knows() -> None:
    first, end = HYPERCORN_VERSIONS
    installed = _parse(version("hypercorn"))
    assert first <= installed < end, (
        f"hypercorn {version('hypercorn')} is not one whose private interfaces "
        f"liveloop/server/frontdoor.py was checked against ({first} to {end}, excluded)")


def test_pyproject_pins_hypercorn_to_those_versions() -> None:
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    (requirement,) = [d for d in project["project"]["dependencies"]
                      if d.startswith("hypercorn")]
    first, end = HYPERCORN_VERSIONS
    bounds = dict(re.findall(r"(>=|<)([\d.]+)", requirement))
    assert _parse(bounds[">="]) == first
    assert _parse(bounds["<"]) == end


def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    one, two = trio.socket.socketpair()
    return trio.SocketStream(one), trio.SocketStream(two)


# -- the hand-off stream's sends ------------------------------------------------------------


async def test_an_eof_asked_during_a_write_waits_for_it() -> None:
    """hypercorn ends a connection (send_eof) outside its send lock, from whichever task
    finished the exchange: during another task's write, that was BusyResourceError."""
    server_end, client_end = socket_pair()
    replay = _Replay(server_end, b"")
    big = b"x" * (8 << 20)  # more than the kernel takes at once: the write waits
    async with trio.open_nursery() as nursery:
        nursery.start_soon(replay.send_all, big)
        await trio.testing.wait_all_tasks_blocked()
        await replay.send_eof()  # during the write: no BusyResourceError
        received = 0
        while chunk := await client_end.receive_some(1 << 20):
            received += len(chunk)
    assert received == len(big)  # the write went whole, then the EOF came
    with pytest.raises(trio.ClosedResourceError):
        await replay.send_all(b"late")  # after the EOF, as hypercorn expects


@pytest.mark.parametrize("eof_first", [True, False])
async def test_a_write_and_an_eof_at_once_never_collide(eof_first: bool) -> None:
    server_end, client_end = socket_pair()
    replay = _Replay(server_end, b"")

    async def write() -> None:
        with contextlib.suppress(trio.ClosedResourceError):  # came after the EOF
            await replay.send_all(b"data")

    async with trio.open_nursery() as nursery:  # BusyResourceError would surface here
        for task in (replay.send_eof, write) if eof_first else (write, replay.send_eof):
            nursery.start_soon(task)
    assert await client_end.receive_some(10) in (b"", b"data")
