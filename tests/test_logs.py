"""Logs an operator can use: text or JSON lines with fields, bounded and escaped; no
client data at INFO; a protocol-error close is one INFO line; configured under the
hypercorn entry too."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from liveloop import logs
from liveloop.app import create_app
from liveloop.config import Settings

from .conftest import DEADLINE, Sock, start_server
from .nodeclient import NodeClient

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
SECRET_NAME = "Zelda-Secret-Name"
SECRET_IMAGE = "data:image/png;base64,U2VjcmV0SW1hZ2U="
SECRET_CHAT = "secret chat text"
SECRET_SDP = "v=0\r\no=- 99 2 IN IP4 203.0.113.77\r\ns=secret-sdp\r\n"


def record(message: str, *args: object, level: int = logging.INFO,
           exc_info: bool = False, **fields: object) -> logging.LogRecord:
    made = logging.LogRecord("liveloop.test", level, __file__, 1, message, args,
                             sys.exc_info() if exc_info else None)
    made.__dict__.update(fields)
    return made


def test_json_lines_have_time_level_logger_message_and_fields() -> None:
    line = logs.JsonFormatter().format(record("session closed", sid="abc",
                                              reason="ping timeout", count=3))
    document = json.loads(line)
    assert "\n" not in line
    assert document["level"] == "INFO" and document["logger"] == "liveloop.test"
    assert document["message"] == "session closed"
    assert (document["sid"], document["reason"], document["count"]) == (
        "abc", "ping timeout", 3)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", document["time"])


def test_json_lines_carry_a_traceback_as_a_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        line = logs.JsonFormatter().format(record("failed", level=logging.ERROR,
                                                  exc_info=True))
    document = json.loads(line)
    assert "\n" not in line and "ValueError: boom" in document["traceback"]


def test_text_lines_are_one_line_with_fields_and_escapes() -> None:
    text = logs.TextFormatter().format(record("evil %s", "a\nFAKE ERROR line\x1b[31m",
                                              sid="abc", reason="parse error"))
    assert "\n" not in text
    assert text.endswith('evil a\\nFAKE ERROR line\\x1b[31m sid=abc reason="parse error"')
    assert " INFO liveloop.test: " in text


def test_messages_and_fields_are_bounded() -> None:
    huge = "x" * 100_000
    for formatter in (logs.TextFormatter(), logs.JsonFormatter()):
        line = formatter.format(record("%s", huge, detail=huge))
        assert len(line) < logs.MAX_MESSAGE + logs.MAX_FIELD + 200


def test_clip_escapes_and_cuts_client_strings() -> None:
    assert logs.clip("evil\u202eevent\u200b\ud800") == "'evil\\u202eevent\\u200b\\ud800'"
    assert logs.clip("a" * 1000) == repr("a" * logs.CLIP) + "…"
    assert logs.clip(b"\x00") == repr("b'\\x00'")


def test_client_addresses_are_hidden_unless_switched_on() -> None:
    assert logs.client_address(Settings(), "203.0.113.9") == logs.HIDDEN
    on = Settings(log_client_addresses=True)
    assert logs.client_address(on, "203.0.113.9") == "'203.0.113.9'"


def test_configure_replaces_only_its_own_handler() -> None:
    logger = logging.getLogger("liveloop.test.configure")
    other = logging.NullHandler()
    logger.addHandler(other)
    try:
        stream = io.StringIO()
        logs.configure(Settings(log_format="text"), logger=logger.name)
        logs.configure(Settings(log_format="json", log_level="warning"), logger=logger.name,
                       stream=stream)
        assert len(logger.handlers) == 2 and other in logger.handlers
        logger.info("not shown")
        logger.warning("shown", extra={"sid": "s1"})
        lines = stream.getvalue().splitlines()
        assert [json.loads(line)["sid"] for line in lines] == ["s1"]
    finally:
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)


# -- against the real server ------------------------------------------------------------


class Captured(logging.Handler):
    """Every record any logger emits, at every level, while the test runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()  # records come from the Trio thread (the in-process server)
        self._changed = trio.Event()

    async def wait_for(self, found: Callable[[logging.LogRecord], bool]) -> None:
        """Until a record for which ``found`` holds has been emitted."""
        while not any(found(r) for r in self.records):
            await self._changed.wait()


@pytest.fixture
def captured() -> Iterator[Captured]:
    root = logging.getLogger()
    handler, level = Captured(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def rendered(record: logging.LogRecord) -> str:
    """The record as both formatters would write it."""
    return logs.TextFormatter().format(record) + logs.JsonFormatter().format(record)


async def test_a_call_logs_nothing_at_info_and_no_client_data(
        nursery: trio.Nursery, captured: Captured) -> None:
    settings = Settings(bind="127.0.0.1:0", rate_limits=False)
    url = await start_server(nursery, create_app(settings), settings)
    ready = len(captured.records)  # the listening line names the server's address, rightly
    async with NodeClient("node") as driver:
        a, b = Sock(driver, "a"), Sock(driver, "b")
        with trio.fail_after(DEADLINE):
            for sock in (a, b):
                await sock.connect(url)
                await sock.wait("connect")
            start = len(captured.records)
            assert (await a.call("request-room", {"name": SECRET_NAME,
                                                  "userImage": SECRET_IMAGE}))["ok"]
            assert (await b.call("request-room", {"name": "Bob"}))["ok"]
            await b.receive("match-done")
            offer = {"offer": {"type": "offer", "sdp": SECRET_SDP}}
            for _ in range(20):
                assert (await a.call("negotiation-call-offer", offer))["ok"]
                assert (await a.call("newMessage", {"message": SECRET_CHAT}))["ok"]
            for _ in range(20):
                await b.receive("negotiation-call-offer")
            assert not (await a.call("negotiation-call-offer", {"offer": 1}))["ok"]
            assert not (await a.call("no-such-event\u202e", SECRET_NAME))["ok"]
            during = captured.records[start:]
            assert (await a.call("stop-call"))["ok"]
            await b.receive("stop-by-remote-user")
    loud = [r for r in during if r.levelno >= logging.INFO]
    assert loud == [], [r.getMessage() for r in loud]
    for made in captured.records[ready:]:
        if made.levelno >= logging.INFO:
            text = rendered(made)
            for secret in (SECRET_NAME, SECRET_IMAGE, SECRET_CHAT, "secret-sdp",
                           "127.0.0.1:", "203.0.113.77"):
                assert secret not in text, text


def _post(url: str, body: bytes) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"),
                                    timeout=10) as response:
            status: int = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    return status


def _bad_packet(base: str) -> str:
    """Open a polling session and send it a malformed Socket.IO packet; its sid."""
    opened = urllib.request.urlopen(f"{base}/socket.io/?EIO=4&transport=polling",
                                    timeout=10).read().decode()
    sid: str = json.loads(opened[1:])["sid"]
    url = f"{base}/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert _post(url, b"40") == 200
    _post(url, b'42["x", {"name": "\xe2\x80\xae' + SECRET_NAME.encode() + b'"')
    return sid


async def test_a_protocol_error_close_is_one_info_line_without_traceback(
        nursery: trio.Nursery, captured: Captured) -> None:
    settings = Settings(bind="127.0.0.1:0")
    url = await start_server(nursery, create_app(settings), settings)
    sid = await trio.to_thread.run_sync(_bad_packet, url)
    with trio.fail_after(DEADLINE):
        await captured.wait_for(
            lambda r: getattr(r, "sid", None) == sid and r.levelno >= logging.INFO)
    about = [r for r in captured.records if getattr(r, "sid", None) == sid]
    loud = [r for r in about if r.levelno >= logging.INFO]
    assert len(loud) == 1 and loud[0].levelno == logging.INFO, [rendered(r) for r in about]
    assert loud[0].exc_info is None and loud[0].reason == "parse error"  # type: ignore[attr-defined]
    assert not [r for r in captured.records if r.levelno >= logging.WARNING]
    assert SECRET_NAME not in rendered(loud[0])


async def test_live_loop_info_lines_reach_stderr_under_hypercorn() -> None:
    env = {**os.environ, "LIVELOOP_LOG_FORMAT": "json"}
    process = await trio.lowlevel.open_process(
        [str(BIN / "hypercorn"), "-k", "trio", "--bind", "127.0.0.1:0", "liveloop.app:app"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert process.stderr is not None
    seen = b""
    try:
        with trio.fail_after(60):
            while (found := re.search(rb"(http://127\.0\.0\.1:\d+)\D", seen)) is None:
                seen += await process.stderr.receive_some(65536)
            sid = await trio.to_thread.run_sync(_bad_packet, found.group(1).decode())
            while f'"sid": "{sid}"'.encode() not in seen:
                seen += await process.stderr.receive_some(65536)
    finally:
        process.terminate()
        await process.wait()
    line = next(line for line in seen.decode().splitlines() if sid in line)
    document = json.loads(line)
    assert document["level"] == "INFO" and document["reason"] == "parse error"
