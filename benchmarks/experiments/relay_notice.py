"""The encoding work of one relay across nodes, before and after the notice carried the
event's JSON, without I/O or task switches.

    python benchmarks/experiments/relay_notice.py [--rounds 5]

Before: the sender's node encoded ``["D", sid, node, room, event, payload]``; the
partner's node decoded all of it (``json.loads``), then encoded the event again for the
client. Now: the sender's node encodes ``[event, payload]`` once, as the client gets it,
and splices it into the notice; the partner's node reads the notice's head and writes
that text as it is. Both sides are timed (notice to bytes, bytes to the frame), for an
ICE candidate and for a call offer with a 2 kB SDP, alternately.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import timeit
from typing import Any

from liveloop import events
from liveloop.cluster import notices
from liveloop.wire import socketio
from liveloop.wire.fastjson import compact_encoder

_old_compact = compact_encoder(ensure_ascii=True, allow_nan=True)

CANDIDATE = events.candidate_relayed(None) | {"candidate": {
    "candidate": "candidate:842163049 1 udp 1677729535 192.168.1.10 51234 typ srflx raddr "
                 "10.0.0.5 rport 51234 generation 0 ufrag sK3a network-cost 999",
    "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "sK3a"}}
OFFER = {"remoteUserDetails": {"socket": "s" * 20, "userName": "Ann"}, "roomId": "r" * 22,
         "offer": {"type": "offer", "sdp": "a=candidate:1 1 udp 2122260223 x\r\n" * 60}}


def before(event: str, payload: Any) -> str:
    text = _old_compact(["D", "s" * 20, "node", "r" * 22, event, payload]).encode()
    fields = json.loads(text)  # the partner's node
    return "4" + str(socketio.encode_event("/", fields[4], (fields[5],))[0])


def now(event: str, payload: Any) -> str:
    text = notices.encode(notices.DeliverNotice(
        "s" * 20, "node", "r" * 22, event, socketio.event_json(event, (payload,)))).encode()
    notice = notices.decode(text)  # the partner's node
    assert isinstance(notice, notices.DeliverNotice)
    return "42" + notice.args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    loads = {"ICE candidate": (events.NEW_ICE_CANDIDATES, CANDIDATE),
             "2 kB offer": (events.CALL_OFFER, OFFER)}
    for event, payload in loads.values():
        assert before(event, payload) == now(event, payload)
    n = args.number
    for number in range(args.rounds):
        for name, (event, payload) in loads.items():
            was = min(timeit.repeat(functools.partial(before, event, payload), number=n,
                                    repeat=3))
            new = min(timeit.repeat(functools.partial(now, event, payload), number=n,
                                    repeat=3))
            print(f"round {number + 1}, {name}: before {was / n * 1e6:.2f} µs, "
                  f"now {new / n * 1e6:.2f} µs, now / before {new / was:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
