"""The Engine.IO server in-process: transports, upgrade, heartbeat, and bad input.

Every test runs under Trio's autojump clock: heartbeats and timeouts take no real time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import attrs
import pytest
import trio
import trio.testing

from liveloop.config import Settings
from liveloop.conformance import EchoApp
from liveloop.server import EngineServer
from liveloop.server.cors import OriginPolicy

from .asgi import Response, http, websocket

PATH = "/engine.io/"
SETTINGS = Settings(ping_interval=25.0, ping_timeout=20.0, max_payload=1000, outbox_size=16,
                    recovery_window=0)


@pytest.fixture
async def engine(nursery: trio.Nursery) -> AsyncIterator[EngineServer]:
    server = EngineServer(SETTINGS, EchoApp)
    await nursery.start(server.run)
    yield server


async def get(engine: EngineServer, sid: str | None = None, **params: str) -> Response:
    query = {"EIO": "4", "transport": "polling", **params}
    if sid is not None:
        query["sid"] = sid
    return await http(engine, "GET", PATH, query)


async def post(engine: EngineServer, sid: str, body: str | bytes) -> Response:
    raw = body.encode() if isinstance(body, str) else body
    return await http(engine, "POST", PATH, {"EIO": "4", "transport": "polling", "sid": sid},
                      raw)


async def handshake(engine: EngineServer) -> str:
    response = await get(engine)
    assert response.status == 200
    assert response.text.startswith("0")
    return str(json.loads(response.text[1:])["sid"])


async def test_polling_handshake_announces_settings(engine: EngineServer) -> None:
    response = await get(engine)
    opened = json.loads(response.text[1:])
    assert opened == {
        "sid": opened["sid"], "upgrades": ["websocket"], "pingInterval": 25000,
        "pingTimeout": 20000, "maxPayload": 1000,
    }
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("params", "method", "status", "code"),
    [
        ({"EIO": "3", "transport": "polling"}, "GET", 400, 5),
        ({"EIO": "4", "transport": "carrier-pigeon"}, "GET", 400, 0),
        ({"EIO": "4", "transport": "polling"}, "POST", 400, 2),
        ({"EIO": "4", "transport": "polling", "sid": "nope"}, "GET", 400, 1),
        ({"EIO": "4", "transport": "polling"}, "PUT", 400, 2),
    ],
)
async def test_bad_requests_get_engineio_error_codes(
    engine: EngineServer, params: dict[str, str], method: str, status: int, code: int
) -> None:
    response = await http(engine, method, PATH, params)
    assert response.status == status
    assert json.loads(response.body)["code"] == code


async def test_polling_echo_of_text_and_binary(engine: EngineServer) -> None:
    sid = await handshake(engine)
    assert (await post(engine, sid, "4hello\x1e4w\u00f6rld \U0001f600\x1ebAQID")).text == "ok"
    assert (await get(engine, sid)).text == "4hello\x1e4w\u00f6rld \U0001f600\x1ebAQID"


async def test_get_waits_for_packets(engine: EngineServer, nursery: trio.Nursery) -> None:
    sid = await handshake(engine)
    got: list[str] = []
    answered = trio.Event()

    async def poll() -> None:
        got.append((await get(engine, sid)).text)
        answered.set()

    nursery.start_soon(poll)
    await trio.testing.wait_all_tasks_blocked()
    assert got == []
    await post(engine, sid, "4late")
    with trio.fail_after(1):
        await answered.wait()
    assert got == ["4late"]


async def test_malformed_payload_closes_only_that_session(engine: EngineServer) -> None:
    bad, good = await handshake(engine), await handshake(engine)
    assert (await post(engine, bad, "4ok\x1e9unknown")).status == 400
    await trio.testing.wait_all_tasks_blocked()
    assert (await get(engine, bad)).status == 400  # the session is gone
    await post(engine, good, "4still here")
    assert (await get(engine, good)).text == "4still here"


async def test_payload_taken_whole_or_not_at_all(nursery: trio.Nursery) -> None:
    seen: list[str | bytes] = []

    class Recorder(EchoApp):
        async def on_messages(self, batch: Sequence[str | bytes]) -> None:
            seen.extend(batch)

    engine = EngineServer(SETTINGS, Recorder)
    await nursery.start(engine.run)
    sid = await handshake(engine)
    assert (await post(engine, sid, "4first\x1ebnot base64!")).status == 400
    await trio.testing.wait_all_tasks_blocked()
    assert seen == []
    assert sid not in engine.sessions


async def test_oversize_post_is_refused_and_closes(engine: EngineServer) -> None:
    sid, good = await handshake(engine), await handshake(engine)
    response = await post(engine, sid, "4" + "x" * 2000)
    assert response.status == 413
    await trio.testing.wait_all_tasks_blocked()
    assert sid not in engine.sessions
    await post(engine, good, "4fine")
    assert (await get(engine, good)).text == "4fine"


async def test_invalid_utf8_body_is_a_bad_request(engine: EngineServer) -> None:
    sid = await handshake(engine)
    assert (await post(engine, sid, b"4\xff\xfe")).status == 400


async def test_overlapping_gets_close_the_session(
    engine: EngineServer, nursery: trio.Nursery
) -> None:
    sid = await handshake(engine)
    first: list[Response] = []

    async def poll() -> None:
        first.append(await get(engine, sid))

    nursery.start_soon(poll)
    await trio.testing.wait_all_tasks_blocked()
    assert (await get(engine, sid)).status == 400
    await trio.testing.wait_all_tasks_blocked()
    assert first and first[0].text == "1"  # the waiting GET learns of the close
    assert sid not in engine.sessions


async def test_a_flood_of_polls_costs_one_session(engine: EngineServer) -> None:
    sids = [await handshake(engine) for _ in range(3)]
    async with trio.open_nursery() as flood:
        for _ in range(50):
            flood.start_soon(get, engine, sids[0])
    await trio.testing.wait_all_tasks_blocked()
    assert sids[0] not in engine.sessions
    for sid in sids[1:]:
        await post(engine, sid, "4ok")
        assert (await get(engine, sid)).text == "4ok"


async def test_heartbeat_over_polling(engine: EngineServer, autojump_clock: object) -> None:
    sid = await handshake(engine)
    start = trio.current_time()
    assert (await get(engine, sid)).text == "2"
    assert trio.current_time() - start == pytest.approx(25.0)
    await post(engine, sid, "3")
    assert (await get(engine, sid)).text == "2"  # still alive, next ping
    # No pong this time: closed pingTimeout after the ping.
    await trio.sleep(20.5)
    assert (await get(engine, sid)).status == 400


async def test_a_late_wake_up_does_not_extend_the_heartbeat(
    engine: EngineServer, autojump_clock: trio.testing.MockClock
) -> None:
    """Time jumps past pingInterval + pingTimeout at once, as when a loaded (or guest)
    loop wakes the timers late: the ping that was due at 25 s is late, but the pong was
    due at 45 s all the same, so a poll now finds the session gone."""
    sid = await handshake(engine)
    await trio.testing.wait_all_tasks_blocked()  # the session task has started
    autojump_clock.jump(SETTINGS.ping_interval + SETTINGS.ping_timeout + 0.5)
    assert (await get(engine, sid)).status == 400


async def test_client_close_packet_ends_the_session(
    engine: EngineServer, nursery: trio.Nursery
) -> None:
    sid = await handshake(engine)
    waiting: list[Response] = []

    async def poll() -> None:
        waiting.append(await get(engine, sid))

    nursery.start_soon(poll)
    await trio.testing.wait_all_tasks_blocked()
    assert (await post(engine, sid, "1")).text == "ok"
    await trio.testing.wait_all_tasks_blocked()
    assert waiting[0].text == "6"
    assert (await get(engine, sid)).status == 400


async def test_websocket_only_session_echoes(engine: EngineServer) -> None:
    async with websocket(engine, PATH, {"EIO": "4", "transport": "websocket"}) as ws:
        opened = await ws.receive()
        assert isinstance(opened, str) and opened.startswith("0")
        assert json.loads(opened[1:])["upgrades"] == []
        await ws.send("4hi")
        assert await ws.receive() == "4hi"
        await ws.send(b"\x00\x01")
        assert await ws.receive() == b"\x00\x01"
        await ws.send(b"")  # an empty binary message is still a message
        assert await ws.receive() == b""


async def test_websocket_heartbeat_timeout(engine: EngineServer, autojump_clock: object) -> None:
    async with websocket(engine, PATH, {"EIO": "4", "transport": "websocket"}) as ws:
        await ws.receive()
        assert await ws.receive() == "2"
        await ws.send("3")
        assert await ws.receive() == "2"
        start = trio.current_time()
        assert await ws.closed() == 1000
        assert trio.current_time() - start == pytest.approx(20.0)


async def test_heartbeats_keep_the_timer_heap_small(engine: EngineServer,
                                                   autojump_clock: object) -> None:
    async with websocket(engine, PATH, {"EIO": "4", "transport": "websocket"}) as ws:
        await ws.receive()
        for _ in range(50):
            start = trio.current_time()
            assert await ws.receive() == "2"
            assert trio.current_time() - start == pytest.approx(25.0)
            await ws.send("3")
            assert len(engine.timers) <= 3  # superseded entries leave at their time


@pytest.mark.parametrize("frame", ["", "9", "5", "0{}", "x" * 2000])
async def test_bad_websocket_frame_closes_only_that_session(
    engine: EngineServer, frame: str
) -> None:
    async with websocket(engine, PATH, {"EIO": "4", "transport": "websocket"}) as good:
        await good.receive()
        async with websocket(engine, PATH, {"EIO": "4", "transport": "websocket"}) as bad:
            await bad.receive()
            await bad.send(frame)
            await bad.closed()
        await good.send("4alive")
        assert await good.receive() == "4alive"


async def test_upgrade_from_polling(engine: EngineServer, nursery: trio.Nursery) -> None:
    sid = await handshake(engine)
    pending: list[Response] = []
    released = trio.Event()

    async def poll() -> None:
        pending.append(await get(engine, sid))
        released.set()

    nursery.start_soon(poll)
    await trio.testing.wait_all_tasks_blocked()
    params = {"EIO": "4", "transport": "websocket", "sid": sid}
    async with websocket(engine, PATH, params) as ws:
        await ws.send("2probe")
        assert await ws.receive() == "3probe"
        with trio.fail_after(1):
            await released.wait()
        assert pending[0].text == "6"  # the waiting GET is released with a NOOP
        await ws.send("5")
        await ws.send("4over websocket")
        assert await ws.receive() == "4over websocket"
        assert (await get(engine, sid)).status == 400  # polling is over
        # A second WebSocket for the same session is accepted, then closed...
        async with websocket(engine, PATH, params) as second:
            assert await second.closed() == 1008
            assert second.accepted
        # ...and the first goes on.
        await ws.send("4still")
        assert await ws.receive() == "4still"


async def test_failed_upgrade_keeps_polling(engine: EngineServer) -> None:
    sid = await handshake(engine)
    async with websocket(engine, PATH, {"EIO": "4", "transport": "websocket", "sid": sid}) as ws:
        await ws.send("2nonsense")
        await ws.closed()
    await post(engine, sid, "4polling")
    assert (await get(engine, sid)).text == "4polling"


async def test_upgrade_times_out(engine: EngineServer, autojump_clock: object) -> None:
    sid = await handshake(engine)
    async with websocket(engine, PATH, {"EIO": "4", "transport": "websocket", "sid": sid}) as ws:
        await ws.closed()
    assert engine.sessions[sid].transport == "polling"


async def test_websocket_for_unknown_sid_is_refused(engine: EngineServer) -> None:
    async with websocket(engine, PATH, {"EIO": "4", "transport": "websocket", "sid": "x"}) as ws:
        assert await ws.closed() == 1008
        assert not ws.accepted


async def test_slow_reader_costs_only_its_outbox(engine: EngineServer) -> None:
    """A client that stops reading is dropped once its outbox is full; the queue never
    grows past the bound, and another client's echo is served meanwhile."""
    async with websocket(engine, PATH, {"EIO": "4", "transport": "websocket"}) as fast:
        await fast.receive()
        sid = await handshake(engine)
        session = engine.sessions[sid]
        for i in range(SETTINGS.outbox_size):
            session.send_frame(f"4n{i}")
        assert session.outbox.statistics().current_buffer_used == SETTINGS.outbox_size
        await fast.send("4ping")
        assert await fast.receive() == "4ping"
        session.send_frame("4one too many")
        assert session.closed and session.close_reason == "outbox overflow"
        assert session.outbox.statistics().current_buffer_used == SETTINGS.outbox_size


async def test_outbox_is_bounded_in_bytes(engine: EngineServer) -> None:
    """A few large packets fill the outbox's bytes long before its packet count; what a
    transport takes no longer counts."""
    sid = await handshake(engine)
    session = engine.sessions[sid]
    big = "4" + "x" * (SETTINGS.outbox_bytes // 4)
    for _ in range(3):
        session.send_frame(big)
    assert len(session.take()) == 3  # taken: the whole budget is free again
    session.send_packets([big, big, big])
    assert not session.closed
    session.send_frame(big)  # four quarters and a byte
    assert session.closed and session.close_reason == "outbox overflow"
    assert session.outbox.statistics().current_buffer_used == 3


class TestCors:
    @pytest.fixture
    async def engine(self, nursery: trio.Nursery) -> AsyncIterator[EngineServer]:
        server = EngineServer(Settings(allowed_origins=("https://app.example",)), EchoApp)
        await nursery.start(server.run)
        yield server

    async def test_allowed_origin_gets_cors_headers(self, engine: EngineServer) -> None:
        response = await http(engine, "GET", PATH, {"EIO": "4", "transport": "polling"},
                              headers={"origin": "https://app.example"})
        assert response.status == 200
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        assert response.headers["access-control-allow-credentials"] == "true"

    async def test_preflight(self, engine: EngineServer) -> None:
        response = await http(engine, "OPTIONS", PATH, {}, headers={
            "origin": "https://app.example", "access-control-request-headers": "content-type"})
        assert response.status == 204
        assert "POST" in response.headers["access-control-allow-methods"]
        assert response.headers["access-control-allow-headers"] == "content-type"

    async def test_other_origin_is_forbidden(self, engine: EngineServer) -> None:
        response = await http(engine, "GET", PATH, {"EIO": "4", "transport": "polling"},
                              headers={"origin": "https://evil.example"})
        assert response.status == 403
        assert json.loads(response.body)["code"] == 4

    async def test_websocket_from_other_origin_is_refused(self, engine: EngineServer) -> None:
        params = {"EIO": "4", "transport": "websocket"}
        async with websocket(engine, PATH, params, {"origin": "https://evil.example"}) as ws:
            await ws.closed()
            assert not ws.accepted


async def test_same_origin_only_by_default(engine: EngineServer) -> None:
    params = {"EIO": "4", "transport": "polling"}
    same = await http(engine, "GET", PATH, params, headers={"origin": "http://test"})
    assert same.status == 200
    other = await http(engine, "GET", PATH, params, headers={"origin": "http://elsewhere"})
    assert other.status == 403


async def test_a_post_waiting_for_a_busy_session_is_released_by_its_close(
    nursery: trio.Nursery
) -> None:
    """A client whose input waits for a busy session is answered when the session
    closes (here from another task, as an outbox overflow would), not never."""

    class Stuck(EchoApp):
        async def on_messages(self, batch: Sequence[str | bytes]) -> None:
            await trio.sleep_forever()

    engine = EngineServer(SETTINGS, Stuck)
    await nursery.start(engine.run)
    sid = await handshake(engine)
    for _ in range(9):  # eight credits, then one more to be the first that waits
        assert (await post(engine, sid, "4x")).status == 200
    answered: list[Response] = []

    async def last_post() -> None:
        answered.append(await post(engine, sid, "4waits"))

    nursery.start_soon(last_post)
    await trio.testing.wait_all_tasks_blocked()
    assert answered == []
    engine.sessions[sid].close("outbox overflow")
    await trio.testing.wait_all_tasks_blocked()
    assert answered[0].status == 200
    assert sid not in engine.sessions


class TestCorsAnyOrigin:
    @pytest.fixture
    async def engine(self, nursery: trio.Nursery) -> AsyncIterator[EngineServer]:
        server = EngineServer(Settings(allowed_origins=("*",)), EchoApp)
        await nursery.start(server.run)
        yield server

    async def test_star_answers_a_literal_star_without_credentials(
            self, engine: EngineServer) -> None:
        response = await http(engine, "GET", PATH, {"EIO": "4", "transport": "polling"},
                              headers={"origin": "https://anyone.example"})
        assert response.status == 200
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers

    async def test_star_preflight(self, engine: EngineServer) -> None:
        response = await http(engine, "OPTIONS", PATH, {}, headers={
            "origin": "https://anyone.example", "access-control-request-headers": "x"})
        assert response.status == 204
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize("origin, host", [
    ("https://a", "a:443"), ("https://a", "a"), ("https://a:443", "a"),
    ("http://a", "a:80"), ("http://a", "a"), ("http://a:8080", "a:8080"),
    ("HTTPS://A.example", "a.EXAMPLE:443"), ("http://[::1]:3000", "[::1]:3000"),
    ("https://a/", "a"),
])
def test_same_origin_normalises_default_ports_by_the_origin_scheme(
        origin: str, host: str) -> None:
    policy = OriginPolicy(())
    scope = {"headers": [(b"origin", origin.encode()), (b"host", host.encode())]}
    assert policy.allows(scope)
    assert policy.headers(scope)[0] == (b"access-control-allow-origin", origin.encode())


@pytest.mark.parametrize("origin, host", [
    ("https://a", "a:80"), ("http://a", "a:443"), ("https://a:8443", "a"),
    ("https://b", "a"), ("null", "a"), ("file://a", "a"), ("https://a", "a:x"),
    ("https://a:99999", "a"), ("https://a", "a:99999"), ("https://a/path", "a"),
    ("https://u@a", "a"), ("https://[::1", "a"), ("a", "a"), ("https://a", ""),
])
def test_same_origin_refuses_other_servers_and_garbage(origin: str, host: str) -> None:
    scope = {"headers": [(b"origin", origin.encode()), (b"host", host.encode())]}
    assert not OriginPolicy(()).allows(scope)
    assert OriginPolicy(()).headers(scope) == []


async def test_a_send_the_asgi_server_refuses_means_the_peer_is_gone() -> None:
    """hypercorn raises h11's LocalProtocolError from ``send`` once a client's bytes put
    its connection in error: that is the peer gone, not a traceback."""
    from liveloop.server.engine import ASGIWebSocket

    sent: list[object] = []

    async def refusing(message: object) -> None:
        sent.append(message)
        raise RuntimeError("Can't send data when our state is ERROR")

    async def never() -> dict[str, object]:
        raise AssertionError("not read")

    ws = ASGIWebSocket(never, refusing)
    await ws.accept()
    assert ws.gone
    await ws.send_frames(["4a", b"b"])
    await ws.close(1000)
    assert sent == [{"type": "websocket.accept"}]  # nothing after the refusal


async def test_a_get_overtaken_by_the_close_still_gets_its_noop(
    engine: EngineServer, autojump_clock: object
) -> None:
    # The official suites send a GET and a POSTed CLOSE at once; the CLOSE may arrive
    # first. That GET gets the NOOP it would have got waiting, and only that one GET.
    sid = await handshake(engine)
    assert (await post(engine, sid, "1")).text == "ok"
    await trio.testing.wait_all_tasks_blocked()
    late = await get(engine, sid)
    assert (late.status, late.text) == (200, "6")
    assert (await get(engine, sid)).status == 400
    # Not for long: a GET a while later is refused like any for an unknown session.
    other = await handshake(engine)
    assert (await post(engine, other, "1")).text == "ok"
    await trio.sleep(5)
    assert (await get(engine, other)).status == 400


async def test_a_burst_reaches_a_python_engineio_client_in_polls_it_accepts(
        nursery: trio.Nursery) -> None:
    """python-engineio's client (python-socketio's) drops the connection on a polling
    answer of more than 16 packets, as a transport error: 40 relayed ICE candidates
    queued between two GETs cost a client its session (issue 12's stall). A burst is
    answered over several GETs of at most 16 packets each, in order."""
    from engineio.payload import Payload

    engine = EngineServer(attrs.evolve(SETTINGS, outbox_size=64), EchoApp)
    await nursery.start(engine.run)
    sid = await handshake(engine)
    sent = [f"4m{i}" for i in range(40)]
    assert (await post(engine, sid, "\x1e".join(sent))).text == "ok"
    received: list[str] = []
    with trio.fail_after(1):
        while len(received) < len(sent):
            body = (await get(engine, sid)).text
            packets = Payload(encoded_payload=body).packets  # ValueError past 16 packets
            assert len(packets) == min(16, len(sent) - len(received))
            received += [packet.encode() for packet in packets]
    assert received == sent
