"""The front door's pin on hypercorn: it uses hypercorn's private interfaces, so it runs
only on the versions it was checked against."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

from liveloop.server.frontdoor import HYPERCORN_VERSIONS


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
