"""protocol/asyncapi.yaml and the code agree.

- every documented client event is handled, and nothing handled is undocumented;
- every client example is accepted by the schema and by the code's ``parse``; every
  documented invalid example is refused by both;
- what the server really emits (payloads and acks, produced by running the domain on
  fake sockets) validates against the documented schemas, as do the builders' outputs;
- error codes and the default size caps are the same on both sides.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import trio
import yaml
from trio.testing import MockClock

from liveloop import events
from liveloop.config import Settings
from liveloop.errors import ERROR_EVENT, ErrorCode, PayloadError
from liveloop.messages import MatchmakerMessage
from liveloop.peer import HANDLED_EVENTS, LiveLoopNamespace
from liveloop.status import Snapshot
from tests.fakes import FakeClient, FakeSocket, open_world

DOCUMENT = pathlib.Path(__file__).parent.parent / "protocol" / "asyncapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
MESSAGES: dict[str, Any] = SPEC["components"]["messages"]


def _resolve(ref: dict[str, Any]) -> dict[str, Any]:
    assert set(ref) == {"$ref"}
    *_, kind, key = ref["$ref"].split("/")
    resolved: dict[str, Any] = SPEC["components"][kind][key]
    return resolved


def _operation(kind: str) -> dict[str, dict[str, Any]]:
    """Documented messages of ``publish`` or ``subscribe``, by Socket.IO event name."""
    found: dict[str, dict[str, Any]] = {}
    for ref in SPEC["channels"]["/"][kind]["message"]["oneOf"]:
        message = _resolve(ref)
        found[message["name"]] = message
    return found


CLIENT = _operation("publish")
SERVER = _operation("subscribe")


def validator(schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    # Local $refs ("#/components/schemas/...") resolve against this root document.
    root = {"components": SPEC["components"], "allOf": [schema]}
    return jsonschema.Draft7Validator(root)


def payload_validator(message: dict[str, Any]) -> jsonschema.Draft7Validator:
    return validator(message["payload"])


ACK = validator({"$ref": "#/components/schemas/Ack"})


def test_document_is_asyncapi() -> None:
    assert SPEC["asyncapi"].startswith("2.6")
    jsonschema.Draft7Validator.check_schema({"components": SPEC["components"]})
    for message in MESSAGES.values():
        assert message["name"] and message["payload"] and message["examples"]


def test_documented_client_events_are_exactly_the_handled_ones() -> None:
    assert set(CLIENT) == set(events.INBOUND) == HANDLED_EVENTS


def test_documented_server_events_are_exactly_the_emitted_ones() -> None:
    assert set(SERVER) == set(events.OUTBOUND) | {ERROR_EVENT}


@pytest.mark.parametrize("name", sorted(CLIENT))
def test_client_examples_accepted_by_schema_and_code(name: str) -> None:
    message = CLIENT[name]
    check = payload_validator(message)
    for example in message["examples"]:
        check.validate(example["payload"])
        events.INBOUND[name].parse(example["payload"], Settings())
    assert "x-ack" in message


@pytest.mark.parametrize("name", sorted(CLIENT))
def test_client_invalid_examples_refused_by_schema_and_code(name: str) -> None:
    message = CLIENT[name]
    check = payload_validator(message)
    # Only an event whose payload is ignored (no schema to break) may list none.
    assert message["x-invalid-examples"] or "$ref" not in message["payload"]
    for bad in message["x-invalid-examples"]:
        assert not check.is_valid(bad), bad
        with pytest.raises(PayloadError):
            events.INBOUND[name].parse(bad, Settings())


@pytest.mark.parametrize("name", sorted(SERVER))
def test_server_examples_match_their_schema(name: str) -> None:
    check = payload_validator(SERVER[name])
    for example in SERVER[name]["examples"]:
        check.validate(example["payload"])


def test_error_codes_agree() -> None:
    assert set(SPEC["components"]["schemas"]["ErrorCode"]["enum"]) == {c.value for c in ErrorCode}
    documented = {code for m in CLIENT.values() for code in m["x-errors"]}
    assert documented | {"unknown-event"} == {c.value for c in ErrorCode}


def test_default_caps_agree() -> None:
    schemas = SPEC["components"]["schemas"]
    defaults = Settings()
    assert schemas["Name"]["maxLength"] == defaults.max_name
    assert schemas["UserImage"]["maxLength"] == defaults.max_image
    assert schemas["Sdp"]["maxLength"] == defaults.max_sdp
    assert schemas["NewMessage"]["properties"]["message"]["maxLength"] == defaults.max_message
    assert schemas["IceCandidateIn"]["properties"]["candidate"]["maxLength"] == \
        defaults.max_candidate
    assert schemas["Id"]["maxLength"] == events.MAX_ID


async def test_every_documented_event_reaches_a_handler() -> None:
    send, _ = trio.open_memory_channel[MatchmakerMessage](math.inf)
    for name, message in CLIENT.items():
        socket = FakeSocket("s1")
        peer = await LiveLoopNamespace(Settings(), send, Snapshot).connect(socket, None)
        await peer.on_event(name, [message["examples"][0]["payload"]], None)
        codes = {args[0]["code"] for event, args in socket.emitted if event == ERROR_EVENT}
        assert codes <= {"not-in-room"}, (name, codes)  # understood, at worst refused
    socket = FakeSocket("s1")
    peer = await LiveLoopNamespace(Settings(), send, Snapshot).connect(socket, None)
    await peer.on_event("undocumented", [{}], None)
    assert socket.emitted[0][1][0]["code"] == "unknown-event"


def emitted(client: FakeClient) -> list[tuple[str, list[Any]]]:
    return list(client.socket.emitted)


async def test_what_the_server_emits_matches_the_document(nursery: trio.Nursery,
                                                          autojump_clock: MockClock) -> None:
    world = await open_world(nursery, stun_urls=["stun:127.0.0.1:3478"],
                             turn_urls=["turn:127.0.0.1:3478"], turn_secret="s3cret")
    a, b, room = await world.pair("Ann", "Bob")
    acks: list[tuple[str, Any]] = []
    for event, payload in [
        ("negotiation-call-offer", {"offer": {"type": "offer", "sdp": "v=0\r\n"},
                                    "roomId": room, "remoteSocketId": b.sid}),
        ("send-new-ice-candidates", {"to": b.sid, "candidate": {"candidate": "c:1"}}),
        ("send-new-ice-candidates", {"to": b.sid, "candidate": None}),
        ("newMessage", {"message": "hi"}),
        ("newMessage", {"message": "hi", "remoteSocket": "stranger"}),
        ("request-room", {"name": ""}),
        ("bogus", {}),
    ]:
        acks.append((event, await world.ask(a, event, payload)))
    acks.append(("negotiation-call-answer", await world.ask(
        b, "negotiation-call-answer", {"ans": {"type": "answer", "sdp": "v=0\r\n"}})))
    for _ in range(11):  # the 11th in a minute is rate-limited: retryAfter
        acks.append(("newMessage", await world.ask(b, "newMessage", {"message": "spam"})))
        acks.append(("get-ice-servers", await world.ask(b, "get-ice-servers")))
    acks.append(("stop-call", await world.ask(b, "stop-call", {"roomId": room})))
    seen: set[str] = set()
    for client in (a, b):
        for event, args in emitted(client):
            seen.add(event)
            if event == events.STOP_BY_REMOTE_USER:
                assert args == []  # no argument at all
                continue
            assert len(args) == 1
            payload_validator(SERVER[event]).validate(args[0])
    assert seen == set(SERVER), set(SERVER) - seen
    assert any("retryAfter" in args[0] for event, args in emitted(b) if event == ERROR_EVENT)
    for event, ack in acks:
        documented = CLIENT[event]["x-ack"] if event in CLIENT else {
            "$ref": "#/components/schemas/Ack"}
        validator(documented).validate(ack)
    assert {ack["ok"] for _, ack in acks} == {True, False}
    ice = [ack for event, ack in acks if event == "get-ice-servers"]
    assert [ack["ok"] for ack in ice] == [True] * 10 + [False]
    assert [len(ack["iceServers"]) for ack in ice[:10]] == [2] * 10


def test_builders_match_the_document() -> None:
    offer = events.SessionDescription("offer", "v=0")
    ans = events.SessionDescription("pranswer", "v=0")
    candidate = events.IceCandidate("candidate:1", None, 3, "u")
    built = {
        "match-done": events.match_done(room_id="r", partner_sid="s", partner_name="n",
                                        partner_image="", initiator=False),
        "negotiation-call-offer": events.offer_relayed(room_id="r", sender_sid="s",
                                                       sender_name="n", offer=offer),
        "negotiation-call-answer": events.answer_relayed(room_id="r", sender_sid="s",
                                                         sender_name="n", ans=ans),
        "new-ice-candidates": events.candidate_relayed(candidate),
        "Message:recived": events.message_relayed(sender_sid="s", message="m"),
    }
    for name, payload in built.items():
        payload_validator(SERVER[name]).validate(payload)
    payload_validator(SERVER["new-ice-candidates"]).validate(events.candidate_relayed(None))
