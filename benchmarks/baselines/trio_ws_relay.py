"""Baseline: the ceiling for a Trio server. A bare trio-websocket server speaking just
enough Engine.IO v4 / Socket.IO v5 for Live Loop's client (WebSocket transport, the
default namespace, acks), pairing clients first come first served and relaying ICE
candidates (and offer, answer, chat) straight onto the partner's WebSocket.

No validation beyond JSON parsing, no actors, no outboxes, no limits: each message costs a
``json.loads`` and a ``json.dumps`` and two WebSocket frames. Whatever Live Loop spends
beyond this is the price of its framing layer, validation, actors and safety.

    python benchmarks/baselines/trio_ws_relay.py --port 8002
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

PING_INTERVAL = 25.0
OPEN = "0" + json.dumps({"sid": "", "upgrades": [], "pingInterval": 25000,
                         "pingTimeout": 20000, "maxPayload": 1000000})
_ids = itertools.count()
_dumps = json.JSONEncoder(separators=(",", ":")).encode


class Peer:
    __slots__ = ("name", "partner", "room", "sid", "ws")

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.sid = f"s{next(_ids)}"
        self.name = ""
        self.partner: Peer | None = None
        self.room = ""


waiting: dict[Peer, None] = {}
peers: set[Peer] = set()


async def emit(peer: Peer, *data: Any) -> None:
    with contextlib.suppress(ConnectionClosed):
        await peer.ws.send_message("42" + _dumps(list(data)))


async def enqueue(peer: Peer) -> None:
    if peer in waiting or peer.partner is not None:
        return
    if not waiting:
        waiting[peer] = None
        return
    other = next(iter(waiting))
    del waiting[other]
    room = f"r{next(_ids)}"
    other.partner, peer.partner, other.room, peer.room = peer, other, room, room
    for me, them, initiator in ((other, peer, True), (peer, other, False)):
        await emit(me, "match-done", {"roomId": room, "remoteUserDetails": {
            "socket": them.sid, "userName": them.name, "userImage": ""},
            "initiator": initiator})


async def end_call(peer: Peer) -> None:
    partner, peer.partner = peer.partner, None
    if partner is not None:
        partner.partner = None
        await emit(partner, "stop-by-remote-user")
        await enqueue(partner)


async def on_event(peer: Peer, event: str, data: Any) -> Any:
    partner = peer.partner
    if event == "send-new-ice-candidates":
        if partner is not None:
            await emit(partner, "new-ice-candidates", {"candidate": data.get("candidate")})
    elif event == "request-room":
        peer.name = str(data.get("name", ""))
        await end_call(peer)
        await enqueue(peer)
    elif event == "stop-call":
        waiting.pop(peer, None)
        await end_call(peer)
    elif partner is None:
        return {"ok": False, "error": {"code": "not-in-room", "message": "not in a call"}}
    elif event == "negotiation-call-offer":
        await emit(partner, event, {"remoteUserDetails": {"socket": peer.sid,
                                    "userName": peer.name}, "roomId": peer.room,
                                    "offer": data.get("offer")})
    elif event == "negotiation-call-answer":
        await emit(partner, event, {"ans": data.get("ans"), "roomId": peer.room,
                                    "name": peer.name, "remoteSocketId": peer.sid})
    elif event == "newMessage":
        payload = {"from": peer.sid, "message": data.get("message")}
        await emit(partner, "Message:recived", payload)
        await emit(peer, "Message:recived", payload)
    return {"ok": True}


async def handle(request: WebSocketRequest) -> None:
    ws = await request.accept()
    peer = Peer(ws)
    peers.add(peer)
    try:
        await ws.send_message(OPEN)
        while True:
            message = await ws.get_message()
            if not isinstance(message, str) or not message.startswith("4"):
                continue  # pongs, and anything else this ceiling does not speak
            if message.startswith("40"):
                await ws.send_message('40{"sid":"' + peer.sid + '"}')
                continue
            if not message.startswith("42"):
                if message.startswith("41"):
                    return
                continue
            body = message[2:]
            start = 0
            while start < len(body) and body[start].isdigit():
                start += 1
            ack = body[:start]
            args = json.loads(body[start:])
            result = await on_event(peer, args[0], args[1] if len(args) > 1 else {})
            if ack:
                await ws.send_message("43" + ack + _dumps([result]))
    except ConnectionClosed:
        pass
    finally:
        peers.discard(peer)
        waiting.pop(peer, None)
        await end_call(peer)


async def pinger() -> None:
    while True:
        await trio.sleep(PING_INTERVAL)
        for peer in list(peers):
            with contextlib.suppress(ConnectionClosed):
                await peer.ws.send_message("2")


async def main(host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pinger)
        await serve_websocket(handle, host, port, ssl_context=None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    trio.run(main, args.host, args.port)
