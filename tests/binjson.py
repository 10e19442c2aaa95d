"""The JSON form of client arguments that both test drivers speak: ``bytes`` (at any
depth) travel as ``{"$bin": base64}``."""

from __future__ import annotations

import base64
from typing import Any


def encode(value: Any) -> Any:
    """Make ``value`` JSON-safe: bytes become ``{"$bin": base64}``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bin": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    return value


def decode(value: Any) -> Any:
    """Inverse of :func:`encode`: ``{"$bin": ...}`` becomes ``bytes``."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$bin"} and isinstance(value["$bin"], str):
            return base64.b64decode(value["$bin"])
        return {k: decode(v) for k, v in value.items()}
    return value
