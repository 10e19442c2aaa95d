"""Live Loop's own client (liveloop.client) against the real server, in-process.

Every wait is on an event or an ack under ``trio.fail_after``; nothing sleeps to
synchronise.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import attrs
import pytest
import trio

from liveloop.app import create_app
from liveloop.client import (
    Ack,
    AnswerReceived,
    ChatMessage,
    ConnectRefused,
    Disconnected,
    ErrorInfo,
    Event,
    IceCandidateReceived,
    LiveLoopClient,
    Match,
    OfferReceived,
    OtherEvent,
    RemoteStopped,
    RequestRefused,
    ServerError,
    open_client,
    open_socketio,
    parse_event,
)
from liveloop.client.socketio import websocket_url
from liveloop.config import Settings
from liveloop.errors import ErrorCode
from liveloop.serve import serve

DEADLINE = 10
IMAGE = "data:image/png;base64,iVBORw0KGgo="
CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 10.0.0.1 54400 typ host",
             "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"}


async def start_server(nursery: trio.Nursery, **overrides: Any) -> str:
    """A Live Loop server on a free port of 127.0.0.1; its URL."""
    settings = attrs.evolve(Settings(bind="127.0.0.1:0", rate_limits=False), **overrides)
    urls: list[str] = await nursery.start(serve, create_app(settings), settings)
    return urls[0]


@pytest.fixture
async def url(nursery: trio.Nursery) -> AsyncIterator[str]:
    yield await start_server(nursery)


async def pair(a: LiveLoopClient, b: LiveLoopClient) -> tuple[Match, Match]:
    """Queue ``a`` then ``b``; both get their match."""
    assert (await a.request_room("Ann", IMAGE)).ok
    assert (await b.request_room("Bob")).ok
    return await a.next_match(), await b.next_match()


# -- pure parts ---------------------------------------------------------------------------


def test_websocket_url() -> None:
    assert websocket_url("http://127.0.0.1:8000") == \
        "ws://127.0.0.1:8000/socket.io/?EIO=4&transport=websocket"
    assert websocket_url("https://h/") == "wss://h/socket.io/?EIO=4&transport=websocket"
    assert websocket_url("ws://h:1/custom?x=1") == \
        "ws://h:1/custom/?x=1&EIO=4&transport=websocket"
    with pytest.raises(ValueError):
        websocket_url("ftp://h")


def test_parse_event_types_and_malformed() -> None:
    assert parse_event(Event("new-ice-candidates", [{"candidate": None}])) == \
        IceCandidateReceived(None)
    assert parse_event(Event("stop-by-remote-user", [])) == RemoteStopped()
    error = parse_event(Event("error-message", [
        {"code": "rate-limited", "message": "slow down", "event": "x", "retryAfter": 2}]))
    assert error == ServerError("rate-limited", "slow down", "x", 2.0)
    assert isinstance(error, ServerError) and error.code is ErrorCode.RATE_LIMITED
    assert parse_event(Event("match-done", ["nope"])) == OtherEvent("match-done", ("nope",))
    assert parse_event(Event("whatever", [1, 2])) == OtherEvent("whatever", (1, 2))


def test_ack_parse() -> None:
    assert Ack.parse([{"ok": True}]) == Ack(True)
    refused = Ack.parse([{"ok": False, "error": {"code": "not-in-room", "message": "m"}}])
    assert refused == Ack(False, ErrorInfo("not-in-room", "m"))
    with pytest.raises(RequestRefused) as info:
        refused.raise_for_error()
    assert info.value.code == ErrorCode.NOT_IN_ROOM
    assert not Ack.parse([]).ok


# -- against the server -------------------------------------------------------------------


async def test_connect_with_auth(url: str) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url, auth={"token": "anything"}) as client:
            assert client.sid
            assert client.sio.engine_sid and client.sio.engine_sid != client.sid
            assert client.sio.ping_interval > 0
            assert not client.sio.closed
        assert client.sio.closed
        assert client.sio.close_reason == "io client disconnect"


async def test_unknown_namespace_is_refused(url: str) -> None:
    with trio.fail_after(DEADLINE), pytest.raises(ConnectRefused):
        async with open_socketio(url, namespace="/nowhere"):
            pytest.fail("connected to a namespace that does not exist")


async def test_exception_in_block_propagates_unwrapped(url: str) -> None:
    with trio.fail_after(DEADLINE), pytest.raises(KeyError):
        async with open_client(url):
            raise KeyError("mine")


async def test_pairing(url: str) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url) as a, open_client(url) as b:
            ma, mb = await pair(a, b)
            assert ma.room_id == mb.room_id
            assert (ma.remote_socket_id, mb.remote_socket_id) == (b.sid, a.sid)
            assert (ma.remote_name, mb.remote_name) == ("Bob", "Ann")
            assert (ma.remote_image, mb.remote_image) == ("", IMAGE)
            assert ma.initiator is True and mb.initiator is False  # a waited longer
            assert a.match == ma and b.match == mb


async def test_relay_offer_answer_ice_and_chat(url: str) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url) as a, open_client(url) as b:
            ma, _ = await pair(a, b)
            assert (await a.send_offer("v=0\r\noffer")).ok
            offer = await b.wait_for(OfferReceived)
            assert offer == OfferReceived(ma.room_id, a.sid, "Ann",
                                          {"type": "offer", "sdp": "v=0\r\noffer"})
            assert (await b.send_answer({"type": "answer", "sdp": "v=0\r\nans"})).ok
            answer = await a.wait_for(AnswerReceived)
            assert answer == AnswerReceived(ma.room_id, b.sid, "Bob",
                                            {"type": "answer", "sdp": "v=0\r\nans"})
            await a.send_ice(CANDIDATE, ack=False)
            assert (await a.send_ice(None)).ok
            assert await b.receive() == IceCandidateReceived(CANDIDATE)
            assert await b.receive() == IceCandidateReceived(None)
            assert (await b.send_message("hello")).ok
            assert await a.wait_for(ChatMessage) == ChatMessage(b.sid, "hello")
            assert await b.wait_for(ChatMessage) == ChatMessage(b.sid, "hello")


async def test_wait_for_keeps_other_events_in_order(url: str) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url) as a, open_client(url) as b:
            await pair(a, b)
            for n in range(3):
                await a.send_ice({**CANDIDATE, "candidate": f"c{n}"}, ack=False)
            assert (await a.send_message("after")).ok
            assert await b.wait_for(ChatMessage) == ChatMessage(a.sid, "after")
            got = [await b.receive() for _ in range(3)]
            assert [e.candidate["candidate"] for e in got  # type: ignore[union-attr,index]
                    ] == ["c0", "c1", "c2"]


async def test_errors_come_as_acks_and_typed_events(url: str) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url) as a:
            ack = await a.send_ice(CANDIDATE)
            assert not ack.ok and ack.error is not None
            assert ack.error.code == ErrorCode.NOT_IN_ROOM
            error = await a.wait_for(ServerError)
            assert error.code == ErrorCode.NOT_IN_ROOM
            assert error.event == "send-new-ice-candidates"
            refused = await a.request_room("   ")
            assert refused.error is not None
            assert refused.error.code == ErrorCode.INVALID_PAYLOAD
            with pytest.raises(RequestRefused):
                refused.raise_for_error()
            assert (await a.wait_for(ServerError)).code == ErrorCode.INVALID_PAYLOAD
            # raw Socket.IO: an unknown event, with an ack
            answer = await a.sio.call("no-such-event", {})
            assert Ack.parse(answer).error == ErrorInfo(ErrorCode.UNKNOWN_EVENT, ANY_TEXT)


class _AnyText(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str)

    __hash__ = str.__hash__


ANY_TEXT = _AnyText()


async def test_rate_limited_error_carries_retry_after(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, rate_limits=True)
    with trio.fail_after(DEADLINE):
        async with open_client(url) as a:
            assert (await a.request_room("Ann")).ok
            assert (await a.stop_call()).ok
            ack = await a.request_room("Ann")
            assert ack.error is not None and ack.error.code == ErrorCode.RATE_LIMITED
            error = await a.wait_for(ServerError)
            assert error.code == ErrorCode.RATE_LIMITED
            assert error.retry_after is not None and error.retry_after > 0


async def test_stop_call_and_next(url: str) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url) as a, open_client(url) as b, open_client(url) as c:
            await pair(a, b)
            assert (await a.stop_call()).ok
            assert a.match is None
            assert await b.wait_for(RemoteStopped) == RemoteStopped()
            assert b.match is None
            # b went back into the queue by itself; c comes along and meets b
            assert (await c.request_room("Cid")).ok
            mc = await c.next_match()
            mb = await b.next_match()
            assert (mc.remote_socket_id, mb.remote_socket_id) == (b.sid, c.sid)
            # "Next" from c: b is told, and both are queued again (not with each other)
            assert (await c.next_partner()).ok
            await b.wait_for(RemoteStopped)
            assert (await a.request_room("Ann")).ok
            ma = await a.next_match()
            assert ma.remote_socket_id in (b.sid, c.sid)


async def test_disconnect_tells_partner_and_ends_streams(url: str) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url) as a, open_client(url) as b:
            await pair(a, b)
            await a.disconnect()
            assert a.sio.closed
            with pytest.raises(Disconnected):
                await a.send_message("too late")
            assert await b.wait_for(RemoteStopped) == RemoteStopped()
            events = [event async for event in a.events()]
            assert all(not isinstance(e, Match) for e in events)


async def test_call_pending_when_connection_closes_raises(url: str) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url) as a:
            closed = trio.Event()

            async def close_later() -> None:
                await a.sio._ws.aclose()
                closed.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(close_later)
                with pytest.raises(Disconnected):
                    while True:  # every call in flight or started after the close fails
                        await a.stop_call()
            assert closed.is_set()


async def test_answers_pings(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, ping_interval=0.05, ping_timeout=0.5)
    with trio.fail_after(DEADLINE):
        async with open_client(url) as a:
            # Round trips until five pings went by: without pongs the server would have
            # closed the connection, and an ack would fail with Disconnected.
            while a.sio.pings < 5:
                assert (await a.request_room("Ann")).ok  # queued already: acks ok
            assert not a.sio.closed


async def test_raw_socketio_emit_and_receive(url: str) -> None:
    with trio.fail_after(DEADLINE):
        async with open_socketio(url) as sio:
            await sio.emit("request-room", {"name": "Raw"})
            await sio.emit("request-room", {"name": ""})
            event = await sio.receive()
            assert event.name == "error-message" and event.ack_id is None
            assert event.args[0]["code"] == "invalid-payload"
            assert json.loads(json.dumps(event.args))  # plain JSON values


# -- the bench's scenarios, inline and tiny -------------------------------------------------


def bench_config(url: str, scenario: str, **overrides: Any) -> Any:
    from liveloop.bench.scenarios import BenchConfig

    return BenchConfig(scenario=scenario, url=url, workers=0, progress=False,
                       server_pid=os.getpid(), **overrides)


async def test_bench_relay_counts_every_message(url: str) -> None:
    from liveloop.bench.runner import run_inline

    with trio.fail_after(30):
        report = await run_inline(bench_config(url, "relay", clients=4, rate=20,
                                               duration=0.5))
    relay = report["relay"]
    assert (relay["sent"], relay["received"], relay["lost"]) == (40, 40, 0)
    assert relay["incomplete_clients"] == 0
    assert relay["latency_ms"]["samples"] == 40
    assert 0 < relay["latency_ms"]["p50"] <= relay["latency_ms"]["max"]
    assert report["server"]["rss_mib"] > 0


async def test_bench_churn_matches(url: str) -> None:
    from liveloop.bench.runner import format_table, run_inline

    with trio.fail_after(30):
        report = await run_inline(bench_config(url, "churn", clients=6, duration=1.0))
    assert report["churn"]["matches"] >= 1
    assert report["churn"]["time_to_match_ms"]["samples"] >= 2
    assert "matches_per_s" in format_table(report)


async def test_bench_idle_holds_connections(url: str) -> None:
    from liveloop.bench.runner import run_inline

    with trio.fail_after(30):
        report = await run_inline(bench_config(url, "idle", clients=10, duration=0.1))
    assert report["idle"]["connections"] == 10
    assert "rss_per_connection_kib" in report["idle"]


async def test_bench_slowhead_holds_unfinished_heads(url: str) -> None:
    from liveloop.bench.runner import run_inline

    with trio.fail_after(30):
        report = await run_inline(bench_config(url, "slowhead", clients=5, duration=0.1))
    assert report["slowhead"]["connections"] == 5
    assert "rss_per_connection_kib" in report["slowhead"]


async def test_bench_slowhead_spreads_over_every_url(nursery: trio.Nursery) -> None:
    """``--url a,b``: the unfinished heads go to each server in turn, as the other
    scenarios' clients do."""
    from liveloop.bench.runner import run_inline

    heads: dict[int, list[bytes]] = {}
    all_read = trio.Event()

    async def listen() -> int:
        # A stand-in server that keeps what each connection sent, once it has ended.
        async def read(stream: trio.SocketStream) -> None:
            data = b""
            async with stream:
                while chunk := await stream.receive_some(1024):
                    data += chunk
            heads[port].append(data)
            if sum(map(len, heads.values())) == 6:
                all_read.set()

        listeners = await nursery.start(partial(trio.serve_tcp, read, 0, host="127.0.0.1"))
        port: int = listeners[0].socket.getsockname()[1]
        heads[port] = []
        return port

    ports = [await listen(), await listen()]
    url = ",".join(f"http://127.0.0.1:{port}" for port in ports)
    with trio.fail_after(30):
        report = await run_inline(bench_config(url, "slowhead", clients=6, duration=0.1))
        await all_read.wait()  # the bench closed them; each server has read its part
    assert report["slowhead"]["connections"] == 6
    for port in ports:
        assert len(heads[port]) == 3, heads
        assert all(head.startswith(b"GET / HTTP/1.1\r\n") for head in heads[port])


async def test_bench_says_when_the_server_rate_limits(nursery: trio.Nursery) -> None:
    from liveloop.bench.runner import BenchError, run_inline

    url = await start_server(nursery, rate_limits=True)
    with trio.fail_after(30), pytest.raises(BenchError, match="--rate-limits off"):
        await run_inline(bench_config(url, "churn", clients=2, duration=5.0,
                                      churn_mode="stop"))


def test_bench_command_line() -> None:
    from liveloop.bench.cli import config_from_args
    from liveloop.bench.runner import BenchError, run
    from liveloop.cli import _parser

    args = _parser().parse_args(["bench", "relay", "--url", "http://127.0.0.1:1",
                                 "--clients", "3", "--workers", "0", "--no-progress"])
    assert callable(args.handler)
    config = config_from_args(args)
    assert (config.scenario, config.clients, config.workers) == ("relay", 3, 0)
    with pytest.raises(BenchError, match="even"):
        run(config)
