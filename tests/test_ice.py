"""get-ice-servers: TURN REST API credentials, the answer's shape, the secret's care."""

from __future__ import annotations

import base64
import math
import os
import time
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from liveloop.config import Settings
from liveloop.ice import IceServers, turn_password, turn_username
from tests.fakes import open_world


def test_credential_is_base64_hmac_sha1_of_the_username() -> None:
    # Computed independently: printf '1700000600:abc' | openssl dgst -sha1
    #   -hmac north-secret  ->  ab40e6b2b0a7e133f5255163a520da6d996e3f9d
    assert turn_username(1700000600, "abc") == "1700000600:abc"
    password = turn_password(b"north-secret", "1700000600:abc")
    assert base64.b64decode(password).hex() == "ab40e6b2b0a7e133f5255163a520da6d996e3f9d"


def ice(now: float = 1_700_000_000.4, **overrides: object) -> IceServers:
    settings = Settings(**overrides)  # type: ignore[arg-type]
    return IceServers.from_settings(settings, wall_clock=lambda: now)


def test_answer_lists_stun_then_turn_with_a_credential_valid_ttl_seconds() -> None:
    servers = ice(stun_urls=("stun:s:3478",), turn_urls=("turn:t:3478", "turns:t:443"),
                  turn_secret="north-secret", turn_ttl=600)
    answer = servers.answer("abc")
    assert answer == {"ttl": 600, "iceServers": [
        {"urls": ["stun:s:3478"]},
        {"urls": ["turn:t:3478", "turns:t:443"], "username": "1700000600:abc",
         "credential": turn_password(b"north-secret", "1700000600:abc")},
    ]}


def test_without_turn_only_stun_and_without_anything_an_empty_list() -> None:
    assert ice(stun_urls=("stun:s",)).answer("x")["iceServers"] == [{"urls": ["stun:s"]}]
    assert ice().answer("x") == {"iceServers": [], "ttl": 600}


def test_secret_from_a_file_and_never_in_repr(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("from-file\n")
    servers = ice(turn_urls=("turn:t",), turn_secret="ignored", turn_secret_file=str(path))
    assert servers.secret == b"from-file"
    settings = Settings(turn_urls=("turn:t",), turn_secret="hidden-secret")
    assert "hidden-secret" not in repr(settings)
    assert "from-file" not in repr(servers)


def test_a_changed_secret_file_is_read_again(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    path = tmp_path / "secret"
    path.write_text("old-secret\n")
    servers = ice(turn_urls=("turn:t",), turn_secret_file=str(path))
    assert servers.secret == b"old-secret"
    path.write_text("new-secret\n")
    os.utime(path, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    assert servers.secret == b"new-secret"
    password = servers.answer("x")["iceServers"][0]["credential"]
    assert password == turn_password(b"new-secret", "1700000600:x")
    path.write_text("")
    os.utime(path, ns=(2, 2))
    assert servers.secret == b"new-secret"  # an empty file keeps the secret in use
    path.unlink()
    assert servers.secret == b"new-secret"
    assert "secret" in caplog.text and "new-secret" not in caplog.text


def test_turn_without_a_secret_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no turn_secret"):
        ice(turn_urls=("turn:t",))
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError, match="empty"):
        ice(turn_urls=("turn:t",), turn_secret_file=str(tmp_path / "empty"))


async def test_each_connection_gets_its_own_id_never_its_name_or_sid(
        nursery: trio.Nursery, autojump_clock: MockClock) -> None:
    world = await open_world(nursery, turn_urls=["turn:127.0.0.1:3478"], turn_secret="k")
    a, b, _ = await world.pair("Ann", "Bob")
    first = await world.ask(a, "get-ice-servers")
    again = await world.ask(a, "get-ice-servers", {"ignored": True})
    other = await world.ask(b, "get-ice-servers")
    ids = [ack["iceServers"][0]["username"].split(":")[1] for ack in (first, again, other)]
    assert ids[0] == ids[1] != ids[2]
    assert not {ids[0], ids[2]} & {a.sid, b.sid, "Ann", "Bob"}
    expiry = int(first["iceServers"][0]["username"].split(":")[0])
    assert 0 < expiry - math.floor(time.time()) <= 600


async def test_flooding_is_rate_limited_for_the_sender_only(
        nursery: trio.Nursery, autojump_clock: MockClock) -> None:
    world = await open_world(nursery)
    a, b, _ = await world.pair("Ann", "Bob")
    answers = [await world.ask(a, "get-ice-servers") for _ in range(11)]
    assert [x["ok"] for x in answers] == [True] * 10 + [False]
    assert answers[-1]["error"]["code"] == "rate-limited"
    assert (await world.ask(b, "get-ice-servers"))["ok"] is True
    await trio.sleep(60)
    assert (await world.ask(a, "get-ice-servers"))["ok"] is True
