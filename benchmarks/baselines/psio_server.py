"""Baseline: Live Loop's events with python-socketio, served by uvicorn.

What a Python developer would write today for the seed's API: a module-level
``AsyncServer``, dicts for the queue and the pairs, one handler per event. Matching is
first come, first served; offer, answer, ICE and chat go to the partner only; stop-call
and "Next" (request-room from inside a room) end the room, tell the partner and re-queue
it; a disconnect does the same. Acks answer ``{ok: true}`` or ``{ok: false, error}``. No
rate limits, no pair cooldown, light validation: the work a relay does, and no more.

    python benchmarks/baselines/psio_server.py --port 8001
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import socketio
import uvicorn

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")
app = socketio.ASGIApp(sio)

waiting: dict[str, dict[str, str]] = {}  # sid -> {name, image}, in arrival order
partner_of: dict[str, str] = {}
room_of: dict[str, str] = {}
profile: dict[str, dict[str, str]] = {}

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def on(event: str) -> Callable[[Handler], Handler]:
    """``@sio.on(event)`` with types (python-socketio has none): registers the handler
    and gives it back as it was."""

    def register(handler: Handler) -> Handler:
        sio.on(event, handler)
        return handler

    return register


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


async def _refuse(sid: str, event: str, code: str, message: str) -> dict[str, Any]:
    await sio.emit("error-message", {"code": code, "message": message, "event": event},
                   to=sid)
    return _error(code, message)


async def _match(first: str, second: str) -> None:
    room = uuid.uuid4().hex
    partner_of[first], partner_of[second] = second, first
    room_of[first] = room_of[second] = room
    for me, other, initiator in ((first, second, True), (second, first, False)):
        details = profile.get(other, {"name": "", "image": ""})  # may be leaving
        await sio.emit("match-done", {
            "roomId": room,
            "remoteUserDetails": {"socket": other, "userName": details["name"],
                                  "userImage": details["image"]},
            "initiator": initiator,
        }, to=me)


async def _enqueue(sid: str) -> None:
    if sid in waiting or sid in partner_of or sid not in profile:  # gone, or queued
        return
    if waiting:
        other = next(iter(waiting))
        del waiting[other]
        await _match(other, sid)
    else:
        waiting[sid] = profile[sid]


async def _end_call(sid: str) -> None:
    partner = partner_of.pop(sid, None)
    room_of.pop(sid, None)
    if partner is not None:
        partner_of.pop(partner, None)
        room_of.pop(partner, None)
        await sio.emit("stop-by-remote-user", to=partner)
        await _enqueue(partner)


@on("request-room")
async def request_room(sid: str, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) \
            or not data["name"].strip():
        return await _refuse(sid, "request-room", "invalid-payload", "name is required")
    profile[sid] = {"name": data["name"].strip(), "image": str(data.get("userImage") or "")}
    if sid in partner_of:  # "Next"
        await _end_call(sid)
    await _enqueue(sid)
    return {"ok": True}


async def _relay(sid: str, event: str, out_event: str, payload: dict[str, Any]
                 ) -> dict[str, Any]:
    partner = partner_of.get(sid)
    if partner is None:
        return await _refuse(sid, event, "not-in-room", "you are not in a call")
    await sio.emit(out_event, payload, to=partner)
    return {"ok": True}


@on("negotiation-call-offer")
async def offer(sid: str, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("offer"), dict):
        return await _refuse(sid, "negotiation-call-offer", "invalid-payload", "offer")
    me = profile.get(sid, {"name": ""})
    return await _relay(sid, "negotiation-call-offer", "negotiation-call-offer", {
        "remoteUserDetails": {"socket": sid, "userName": me["name"]},
        "roomId": room_of.get(sid), "offer": data["offer"]})


@on("negotiation-call-answer")
async def answer(sid: str, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("ans"), dict):
        return await _refuse(sid, "negotiation-call-answer", "invalid-payload", "ans")
    me = profile.get(sid, {"name": ""})
    return await _relay(sid, "negotiation-call-answer", "negotiation-call-answer", {
        "ans": data["ans"], "roomId": room_of.get(sid), "name": me["name"],
        "remoteSocketId": sid})


@on("send-new-ice-candidates")
async def ice(sid: str, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or "candidate" not in data:
        return await _refuse(sid, "send-new-ice-candidates", "invalid-payload", "candidate")
    return await _relay(sid, "send-new-ice-candidates", "new-ice-candidates",
                        {"candidate": data["candidate"]})


@on("newMessage")
async def new_message(sid: str, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        return await _refuse(sid, "newMessage", "invalid-payload", "message")
    partner = partner_of.get(sid)
    if partner is None:
        return await _refuse(sid, "newMessage", "not-in-room", "you are not in a call")
    payload = {"from": sid, "message": data["message"]}
    await sio.emit("Message:recived", payload, to=partner)
    await sio.emit("Message:recived", payload, to=sid)
    return {"ok": True}


@on("stop-call")
async def stop_call(sid: str, data: Any = None) -> dict[str, Any]:
    waiting.pop(sid, None)
    await _end_call(sid)
    return {"ok": True}


@on("disconnect")
async def disconnect(sid: str, *args: Any) -> None:
    waiting.pop(sid, None)
    await _end_call(sid)
    profile.pop(sid, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
