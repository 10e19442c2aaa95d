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
