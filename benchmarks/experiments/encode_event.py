#!/usr/bin/env python3
"""The JSON encodings of a relay: the relayed event's packet, and the notice that carries
it to another node, each as it is (``liveloop.wire.fastjson``) against what it replaced
(``json.JSONEncoder.encode`` and ``json.dumps(..., separators=...)``, which make a C
encoder on every call, and a surrogate search over every text), interleaved in one
process so that the machine's load weighs on both alike.

    python benchmarks/experiments/encode_event.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import timeit
from typing import Any

from liveloop.cluster import notices
from liveloop.wire import socketio

EVENT: list[Any] = ["new-ice-candidates", {"candidate": {
    "candidate": "candidate:1 1 udp 2122260223 192.0.2.1 40001 typ host generation 0",
    "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "1234567.89"}}]

_SURROGATE = re.compile("[\ud800-\udfff]")
_before_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False,
                                  separators=(",", ":")).encode


def before(data: Any) -> str:
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", _before_encode(data))


def notice_now() -> str:
    # Since the notice carries the event's JSON (``[event, payload]``) as the client gets
    # it, encoding that text is part of encoding the notice.
    return notices.encode(notices.DeliverNotice(
        "s" * 20, "node", "r" * 22, EVENT[0], socketio.event_json(EVENT[0], EVENT[1:])))


def notice_before() -> str:
    return json.dumps(["D", "s" * 20, "node", "r" * 22, *EVENT], separators=(",", ":"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=50_000)
    args = parser.parse_args()
    assert before(EVENT) == socketio._dumps(EVENT)
    assert json.loads(notice_before()) == [*json.loads(notice_now())[:4], *EVENT]
    n = args.number
    pairs = {"event": (lambda: before(EVENT), lambda: socketio._dumps(EVENT)),
             "notice": (notice_before, notice_now)}
    for number in range(args.rounds):
        for name, (was, now) in pairs.items():
            old = min(timeit.repeat(was, number=n, repeat=3)) / n * 1e6
            new = min(timeit.repeat(now, number=n, repeat=3)) / n * 1e6
            print(f"round {number + 1}, {name}: before {old:.2f} µs, now {new:.2f} µs, "
                  f"now / before {new / old:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
