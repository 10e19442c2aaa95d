"""Logging an operator can use: text or JSON lines, bounded and escaped, with fields.

Built on the standard library's :mod:`logging` alone. A JSON formatter is a screenful
of code here, while a library for it (python-json-logger) or a different logging API
(structlog) would add a dependency, or change every call site, for no more than that;
hypercorn, Trio and Quart log through :mod:`logging` too, so one handler formats them
all.

Conventions for Live Loop's own log calls:

- structured fields go in ``extra`` (``log.info("session closed", extra={"sid": sid,
  "reason": reason})``); text lines show them as ``key=value`` after the message, JSON
  lines as keys of the object;
- a client-controlled string (an event name, a namespace, a header) is passed through
  :func:`clip` first; names, thumbnails, chat text and SDP are never logged at INFO or
  above, and an IP address only through :func:`client_address`, which hides it unless
  ``LIVELOOP_LOG_CLIENT_ADDRESSES=on``;
- nothing at INFO per relayed message; an expected protocol-error close is one INFO line
  with no traceback.

The formatters enforce what they can for every record, whoever logs it: the message is
cut to :data:`MAX_MESSAGE` characters and, in text, control characters are escaped so a
record is one line (a traceback follows on its own lines, indented by Python itself).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

from .config import Settings

MAX_MESSAGE = 2_000
"""Characters of a formatted message kept; the rest is replaced by ``…``."""
MAX_FIELD = 200
"""Characters of one field's value kept."""
CLIP = 64
"""Characters of a client-controlled string kept by :func:`clip`."""
HIDDEN = "-"
"""What :func:`client_address` logs instead of an address when addresses are off."""

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)} | {
    0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def clip(value: object, limit: int = CLIP) -> str:
    """``value`` as a bounded, printable string for a log line: at most ``limit``
    characters of it, then ``repr``-escaped (control, format and surrogate characters
    shown as escapes; quotes included)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit]) + "…"
    return repr(text)


def client_address(settings: Settings, address: object) -> str:
    """An IP address for a log line: itself (clipped) with
    ``LIVELOOP_LOG_CLIENT_ADDRESSES=on``, otherwise :data:`HIDDEN`."""
    return clip(address, 64) if settings.log_client_addresses else HIDDEN


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")}


def _field_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    return _bounded(str(value), MAX_FIELD)


class TextFormatter(logging.Formatter):
    """``2025-01-17T10:00:00.123Z INFO logger: message key=value ...``, one line (plus
    any traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        message = _bounded(record.getMessage(), MAX_MESSAGE).translate(_ESCAPES)
        parts = [f"{_timestamp(record)} {record.levelname} {record.name}: {message}"]
        for key, value in _fields(record).items():
            shown = _field_value(value)
            if isinstance(shown, str):
                shown = shown.translate(_ESCAPES)
                if not shown or " " in shown or "=" in shown:
                    shown = json.dumps(shown, ensure_ascii=False)
            parts.append(f"{key}={shown}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time``, ``level``, ``logger``, ``message``, then the
    record's fields, and ``traceback`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": _bounded(record.getMessage(), MAX_MESSAGE),
        }
        for key, value in _fields(record).items():
            document.setdefault(key, _field_value(value))
        if record.exc_info:
            document["traceback"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False, default=str)


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def formatter(settings: Settings) -> logging.Formatter:
    """The formatter ``LIVELOOP_LOG_FORMAT`` names."""
    return JsonFormatter() if settings.log_format == "json" else TextFormatter()


def configure(settings: Settings, *, logger: str = "", stream: TextIO | None = None
              ) -> logging.Handler:
    """Send ``logger``'s records (the root's by default: Live Loop's, hypercorn's and
    Trio's alike) to ``stream`` (stderr) in ``LIVELOOP_LOG_FORMAT``, at
    ``LIVELOOP_LOG_LEVEL``. Replaces the handler an earlier call installed, and only that
    one; returns the new handler."""
    target = logging.getLogger(logger or None)
    for old in [h for h in target.handlers if getattr(h, "_liveloop", False)]:
        target.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._liveloop = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter(settings))
    target.addHandler(handler)
    target.setLevel(settings.log_level)
    return handler


def configure_under_host(settings: Settings) -> None:
    """Configure logging for an app that another server hosts (``hypercorn -k trio
    liveloop.app:app``), unless the host or the user has: if neither the root logger nor
    ``liveloop``'s has a handler, Live Loop's records get one of their own (the root's
    stays the host's business), so its INFO lines are not lost to Python's last-resort
    handler, which shows WARNING and above only."""
    own = logging.getLogger("liveloop")
    if logging.getLogger().handlers or own.handlers:
        return
    configure(settings, logger="liveloop")
    own.propagate = False
