"""A relay to a partner on another node carries the event's JSON as the client gets it
(the ``D`` notice, :mod:`liveloop.cluster.notices`): the frame the partner's socket
writes must be byte for byte the one a relay within one node writes, recovery offset
and history included."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio

from liveloop import events
from liveloop.cluster import notices as wire
from liveloop.cluster.node import ClusterMatchmaker
from liveloop.cluster.remote import RemoteSocket
from liveloop.config import Settings
from liveloop.messages import Deliver, Matched, MatchmakerMessage, Member
from liveloop.peer import LiveLoopNamespace, Peer
from liveloop.server.recovery import MemoryStore
from liveloop.server.sockets import NamespaceSocket
from liveloop.status import Snapshot
from liveloop.wire.socketio import event_json
from tests.fakes import FakeSocket

ODD_TEXT = "héllo ✓ \ud800 \"quoted\" \\ </script> \u2028"
"""Non-ASCII, a lone surrogate, escapes: what JSON encoders differ on."""


class _Session:
    """Takes what an EngineSession would: frames written, items posted."""

    closed = False

    def __init__(self) -> None:
        self.frames: list[str | bytes] = []
        self.posted: list[object] = []

    def send_frame(self, frame: str | bytes) -> None:
        self.frames.append(frame)

    def send_packets(self, packets: list[str | bytes]) -> None:
        self.frames.extend(packets)

    def post(self, item: Any) -> None:
        self.posted.append(item.message)


def _socket(namespace: str, recovery: bool) -> tuple[NamespaceSocket, _Session]:
    session = _Session()
    socket = NamespaceSocket(session, namespace)  # type: ignore[arg-type]
    socket._connected = True
    socket._held = None
    if recovery:
        socket.record = MemoryStore(Settings()).create(socket.sid, namespace)
    return socket, session


def _history(socket: NamespaceSocket) -> list[str | bytes]:
    return [] if socket.record is None else socket.record.history.after(None)[0]


async def _peer_in_call(recovery: bool) -> tuple[Peer, NamespaceSocket, _Session]:
    socket, session = _socket("/", recovery)
    send, _ = trio.open_memory_channel[MatchmakerMessage](math.inf)
    peer = await LiveLoopNamespace(Settings(), send, Snapshot).connect(socket, {})
    await peer.on_event("request-room", [{"name": "Ann"}], None)
    inbox, _ = trio.open_memory_channel[Any](1)
    await peer.on_message(Matched(1, "r1", inbox, partner=Member(
        "s2", "Bob", "", FakeSocket("s2")), initiator=False))
    return peer, socket, session


def _relays() -> list[Deliver]:
    return [
        Deliver("r1", events.NEW_ICE_CANDIDATES, events.candidate_relayed(None)),
        Deliver("r1", events.MESSAGE_RECEIVED, events.message_relayed(
            sender_sid="s2", message=ODD_TEXT, event_id="e1")),
        Deliver("r1", events.CALL_OFFER, {"roomId": "r1", "offer": {
            "type": "offer", "sdp": f"v=0\r\n{ODD_TEXT}"}, "n": [1, 2.5, None, True]}),
    ]


@pytest.mark.parametrize("recovery", [False, True], ids=["recovery off", "recovery on"])
async def test_a_relay_from_another_node_writes_the_local_frame(recovery: bool) -> None:
    local, local_socket, local_session = await _peer_in_call(recovery)
    remote, remote_socket, remote_session = await _peer_in_call(recovery)
    node = ClusterMatchmaker(Settings())
    node._sockets[remote_socket.sid] = remote_socket
    publish, published = trio.open_memory_channel[wire.Notice](math.inf)
    partner = RemoteSocket(remote_socket.sid, node.node_id, publish)
    start = len(local_session.frames)
    assert start == len(remote_session.frames)
    for deliver in _relays():
        await local.on_message(deliver)  # a partner on this node posts it so
        partner.post(deliver)  # a partner on another node: published...
        text = wire.encode(published.receive_nowait())
        node._received(text.encode())  # ... and read from the channel as bytes there
        forwarded = remote_session.posted.pop()
        assert isinstance(forwarded, Deliver) and forwarded.args is not None
        await remote.on_message(forwarded)
    assert remote_session.frames[start:] == local_session.frames[start:]
    assert len(local_session.frames) - start == len(_relays())
    assert _history(remote_socket) == _history(local_socket)
    if recovery:
        assert str(local_session.frames[-1]).endswith(f',"{len(_history(local_socket))}"]')


@pytest.mark.parametrize("namespace", ["/", "/chat"])
@pytest.mark.parametrize("recovery", [False, True], ids=["recovery off", "recovery on"])
@pytest.mark.parametrize("args", [(), ({"a": ODD_TEXT},), (1, [ODD_TEXT], None)])
def test_emit_json_writes_what_emit_writes(namespace: str, recovery: bool,
                                           args: tuple[Any, ...]) -> None:
    one, one_session = _socket(namespace, recovery)
    other, other_session = _socket(namespace, recovery)
    for _ in range(2):
        one.emit("ev", *args)
        other.emit_json(event_json("ev", args))
    assert other_session.frames == one_session.frames
    assert _history(other) == _history(one)


def test_deliver_notice_text_and_fallback() -> None:
    args = event_json(events.MESSAGE_RECEIVED, [{"message": ODD_TEXT}])
    notice = wire.DeliverNotice("s\"1", "n1", "R", events.MESSAGE_RECEIVED, args)
    text = wire.encode(notice)
    assert text.endswith(f",{args}]")  # carried as it is
    decoded = wire.decode(text.encode())
    assert decoded == notice == wire.decode(text)
    assert isinstance(decoded, wire.DeliverNotice) and decoded.args == args
    # Any other JSON spelling of the same notice decodes to the same text.
    spaced = f'[ "D", "s\\"1", "n1", "R", ["{events.MESSAGE_RECEIVED}", {{"message": 1}}] ]'
    decoded = wire.decode(spaced)
    assert isinstance(decoded, wire.DeliverNotice)
    assert decoded.args == event_json(events.MESSAGE_RECEIVED, [{"message": 1}])
    for bad in ('["D","a","n","R","ev"]', '["D","a","n","R",[]]', '["D","a","n",["e"]]',
                '["D","a","n","R",["e"],1]', '["D","a',
                # JSON that event_json refuses (NaN): one notice lost, not the node
                '[ "D", "a", "n", "R", ["e", NaN] ]',
                '["M","a","n","not a ticket","R","b","n","B","",1]'):
        with pytest.raises(wire.BadNotice):
            wire.decode(bad)
