"""Settings come from LIVELOOP_* variables, then flags; nothing else reads them."""

from __future__ import annotations

import argparse

import pytest

from liveloop.config import Settings


def test_environment_is_parsed_by_type() -> None:
    settings = Settings.from_env({
        "LIVELOOP_PING_INTERVAL": "2.5", "LIVELOOP_MAX_QUEUE": "7",
        "LIVELOOP_RATE_LIMITS": "off", "LIVELOOP_ALLOWED_ORIGINS": "https://a, https://b",
        "UNRELATED": "x",
    })
    assert settings.ping_interval == 2.5
    assert settings.max_queue == 7
    assert settings.rate_limits is False
    assert settings.allowed_origins == ("https://a", "https://b")


def test_flags_win_over_environment() -> None:
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    args = parser.parse_args(["--max-payload", "123", "--requeue-partner", "no"])
    settings = Settings.from_args(args, {"LIVELOOP_MAX_PAYLOAD": "999",
                                         "LIVELOOP_PAIR_COOLDOWN": "3"})
    assert settings.max_payload == 123
    assert settings.requeue_partner is False
    assert settings.pair_cooldown == 3.0


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError):
        Settings.from_env({"LIVELOOP_RATE_LIMITS": "sometimes"})
    with pytest.raises(ValueError):
        Settings.from_env({"LIVELOOP_MAX_QUEUE": "many"})


def test_conformance_settings_match_the_suites() -> None:
    settings = Settings().conformance()
    assert (settings.ping_interval, settings.ping_timeout, settings.max_payload) == (
        0.3, 0.2, 1_000_000)
    assert settings.allowed_origins == ("*",)


def test_conformance_keeps_ping_settings_that_were_chosen() -> None:
    settings = Settings.from_env({"LIVELOOP_PING_TIMEOUT": "10"}).conformance()
    assert (settings.ping_interval, settings.ping_timeout) == (0.3, 10.0)


def test_a_replay_must_fit_the_outbox() -> None:
    """recovery_packets and recovery_bytes below outbox_size and outbox_bytes, with
    recovery on: else a full replay would overflow the outbox and close the session."""
    with pytest.raises(ValueError, match=r"recovery_packets \(512\) must be below "
                       r"outbox_size \(512\)"):
        Settings.from_env({"LIVELOOP_RECOVERY_PACKETS": "512"})
    with pytest.raises(ValueError, match=r"recovery_packets \(256\) must be below "
                       r"outbox_size \(256\)"):
        Settings(outbox_size=256)
    with pytest.raises(ValueError, match=r"recovery_bytes \(262144\) must be below "
                       r"outbox_bytes \(1000\)"):
        Settings(outbox_bytes=1000)
    assert Settings(outbox_size=257).recovery_packets == 256
    # With recovery off the history is not kept: nothing to fit.
    assert Settings(outbox_size=16, outbox_bytes=1000, recovery_window=0).outbox_size == 16


def test_liveloop_serve_refuses_bad_settings_saying_why(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    from liveloop.cli import main

    assert main(["serve", "--outbox-size", "100"]) == 2
    assert capsys.readouterr().err.startswith(
        "liveloop serve: recovery_packets (256) must be below outbox_size (100)")
