"""The room actor on its own (hang-ups, strangers, failure), and the payloads relayed
between its members."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from liveloop.config import Settings
from liveloop.events import (
    CallAnswer,
    CallOffer,
    IceCandidate,
    NewMessage,
    SendIceCandidates,
    SessionDescription,
)
from liveloop.messages import Hangup, HangupReason, Member, RoomEnded
from liveloop.room import INBOX_SIZE, Room, relayed
from tests.fakes import FakeSocket


class Posts(FakeSocket):
    """A socket that keeps what was posted to it, instead of delivering it."""

    def __init__(self, sid: str) -> None:
        super().__init__(sid)
        self.posted: list[object] = []

    def post(self, message: object) -> None:
        self.posted.append(message)


def make_room(settings: Settings | None = None
              ) -> tuple[Room, trio.MemorySendChannel[Hangup], Posts, Posts]:
    first, second = Posts("s1"), Posts("s2")
    send, receive = trio.open_memory_channel[Hangup](INBOX_SIZE)
    room = Room("r1", Member("s1", "Ann", "", first), Member("s2", "Bob", "", second),
                settings or Settings(), receive)
    return room, send, first, second


OFFER = SessionDescription("offer", "v=0\r\n")
ANSWER = SessionDescription("answer", "v=0\r\n")


ANN = Member("s1", "Ann", "", FakeSocket("s1"))
BOB = Member("s2", "Bob", "", FakeSocket("s2"))


def test_relayed_payloads_are_the_seeds() -> None:
    offer = relayed(CallOffer(OFFER, remote_socket_id="s2", name="Mallory"), "r1", ANN)
    answer = relayed(CallAnswer(ANSWER, name="Mallory"), "r1", BOB)
    ice = relayed(SendIceCandidates(IceCandidate("candidate:1", "0", 0)), "r1", ANN)
    end = relayed(SendIceCandidates(None), "r1", BOB)
    assert [(d.room_id, d.event) for d in (offer, answer, ice, end)] == [
        ("r1", "negotiation-call-offer"), ("r1", "negotiation-call-answer"),
        ("r1", "new-ice-candidates"), ("r1", "new-ice-candidates")]
    # The names relayed are the ones the server knows, not what the sender claimed.
    assert offer.payload == {"remoteUserDetails": {"socket": "s1", "userName": "Ann"},
                             "roomId": "r1", "offer": {"type": "offer", "sdp": "v=0\r\n"}}
    assert answer.payload == {"ans": {"type": "answer", "sdp": "v=0\r\n"}, "roomId": "r1",
                              "name": "Bob", "remoteSocketId": "s2"}
    assert ice.payload == {"candidate": {"candidate": "candidate:1", "sdpMid": "0",
                                         "sdpMLineIndex": 0, "usernameFragment": None}}
    assert end.payload == {"candidate": None}


def test_relayed_chat() -> None:
    chat = relayed(NewMessage("hello"), "r1", BOB)
    assert (chat.room_id, chat.event) == ("r1", "Message:recived")
    assert chat.payload == {"from": "s2", "message": "hello"}


@pytest.mark.parametrize("reason", list(HangupReason))
async def test_hangup_ends_and_tells_the_partner(nursery: trio.Nursery,
                                                 reason: HangupReason) -> None:
    room, inbox, first, second = make_room()
    done = trio.Event()

    async def run() -> None:
        await room.run()
        done.set()

    nursery.start_soon(run)
    await inbox.send(Hangup("s2", reason))
    await done.wait()
    assert first.posted == [RoomEnded("r1", requeue=True)]
    assert second.posted == []
    with pytest.raises(trio.BrokenResourceError):
        await inbox.send(Hangup("s1", HangupReason.STOP))  # ended: fails fast


async def test_requeue_setting(nursery: trio.Nursery) -> None:
    room, inbox, first, _ = make_room(Settings(requeue_partner=False))
    nursery.start_soon(room.run)
    await inbox.send(Hangup("s2", HangupReason.STOP))
    await trio.testing.wait_all_tasks_blocked()
    assert first.posted == [RoomEnded("r1", requeue=False)]


async def test_strangers_are_ignored(nursery: trio.Nursery) -> None:
    room, inbox, first, second = make_room()
    nursery.start_soon(room.run)
    await inbox.send(Hangup("s3", HangupReason.STOP))
    await trio.testing.wait_all_tasks_blocked()
    assert first.posted == second.posted == []
    assert not room.ended


def test_abandon_tells_both() -> None:
    room, _, first, second = make_room()
    room.abandon()
    assert first.posted == second.posted == [RoomEnded("r1", requeue=True)]
    assert room.ended
