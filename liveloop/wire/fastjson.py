"""Compact JSON encoding on CPython's C encoder, made once.

``json.dumps`` with any argument, and ``json.JSONEncoder.encode``, make a new C encoder on
every call; for a small payload that is about half the time. What is encoded with these
never refers to itself (decoded JSON, whose depth is capped on input, or the server's
own fresh containers), so there is no circular reference check.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any


def _not_json(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def compact_encoder(*, ensure_ascii: bool, allow_nan: bool = False) -> Callable[[Any], str]:
    """A function giving what ``json.dumps(data, separators=(",", ":"),
    ensure_ascii=ensure_ascii, allow_nan=allow_nan)`` gives (TypeError for what is not
    JSON, such as bytes; without ``allow_nan``, ValueError for NaN and infinities)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # another Python: the pure encoder
        return json.JSONEncoder(ensure_ascii=ensure_ascii, allow_nan=allow_nan,
                                separators=(",", ":")).encode
    strings = (json.encoder.encode_basestring_ascii if ensure_ascii
               else json.encoder.encode_basestring)
    chunks = make(None, _not_json, strings, None, ":", ",", False, False, allow_nan)

    def encode(data: Any) -> str:
        return "".join(chunks(data, 0))

    return encode
