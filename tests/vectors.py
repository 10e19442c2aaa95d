"""The wire test vectors of ``protocol/vectors/``, as the codec tests read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

Vector = dict[str, Any]


@attrs.frozen
class Vectors:
    """One vector file, and the subsets the tests parametrize over."""

    all: list[Vector]
    valid: list[Vector]
    invalid: list[Vector]
    canonical: list[Vector]
    """Valid, and in the one form the encoder writes (not ``decode_only``)."""


def load(name: str) -> Vectors:
    """``protocol/vectors/<name>.json``."""
    path = Path(__file__).parent.parent / "protocol" / "vectors" / f"{name}.json"
    every: list[Vector] = json.loads(path.read_text(encoding="utf-8"))
    valid = [v for v in every if not v.get("error")]
    return Vectors(every, valid, [v for v in every if v.get("error")],
                   [v for v in valid if not v.get("decode_only")])


def ids(vectors: list[Vector]) -> list[str]:
    """Test ids: the vectors' names."""
    return [v["name"] for v in vectors]
