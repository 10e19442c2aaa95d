"""The documentation names every setting, with its variable and flag."""

from __future__ import annotations

from pathlib import Path

from liveloop.config import describe

DOCS = Path(__file__).parent.parent / "docs"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    for env, _, _ in describe():
        flag = "--" + env.removeprefix("LIVELOOP_").lower().replace("_", "-")
        assert f"`{env}`" in text and f"`{flag}`" in text, env
