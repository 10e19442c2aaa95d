"""What the pure parts of one relayed ICE candidate cost, without any I/O or task switch.

    python benchmarks/experiments/hot_path_parts.py

times each step a relayed message takes through the sans-IO code with ``timeit``: the
WebSocket frame, the Engine.IO and Socket.IO decoding, the payload's validation, the
relayed event, and its encoding for the partner. On this machine they add up to about
24 µs, against 150-260 µs of server CPU per relayed message under load: the rest is the
runtime (task wake-ups, channels, the session's loop, system calls).
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable, Mapping

from wsproto.frame_protocol import FrameProtocol

from liveloop import events
from liveloop.config import Settings
from liveloop.messages import Member
from liveloop.metrics import Increment, Metrics
from liveloop.room import relayed
from liveloop.wire import engineio as eio
from liveloop.wire import socketio as sio
from liveloop.wire import websocket as ws

N = 20_000
CANDIDATE = {
    "candidate": "candidate:842163049 1 udp 1677729535 192.168.1.10 51234 typ srflx raddr "
                 "10.0.0.5 rport 51234 generation 0 ufrag sK3a network-cost 999",
    "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "sK3a",
}


def measure(name: str, step: Callable[[], object]) -> float:
    micros = timeit.timeit(step, number=N) / N * 1e6
    print(f"{name:24s} {micros:6.2f} µs")
    return micros


def main() -> None:
    settings = Settings()
    text = "2" + json.dumps(["send-new-ice-candidates", {"candidate": CANDIDATE, "to": "peer"}],
                            separators=(",", ":"))
    frame = FrameProtocol(client=True, extensions=[]).send_data("4" + text, True)
    decoder = ws.FrameDecoder(settings.max_payload)
    socketio = sio.Decoder()
    packet = socketio.feed_text(text)
    assert packet is not None
    event = events.parse("send-new-ice-candidates", packet.data[1], settings)
    assert isinstance(event, events.SendIceCandidates)
    sender = Member("sender", "Ann", "", None)  # type: ignore[arg-type]
    deliver = relayed(event, "room", sender)
    encoded = "4" + str(sio.encode_event("/", deliver.event, (deliver.payload,))[0])
    total = sum([
        measure("WebSocket frame", lambda: decoder.feed(frame)),
        measure("Engine.IO packet", lambda: eio.decode_text("4" + text, max_size=10**6)),
        measure("Socket.IO packet", lambda: socketio.feed_text(text)),
        measure("payload validation", lambda: events.parse(
            "send-new-ice-candidates", packet.data[1], settings)),
        measure("relayed event", lambda: relayed(event, "room", sender)),
        measure("encoding", lambda: sio.encode_event("/", deliver.event, (deliver.payload,))),
        measure("WebSocket frame out", lambda: ws.encode_messages([encoded])),
    ])
    print(f"{'total':24s} {total:6.2f} µs  (no I/O, no task switch)")
    # The one metrics step of a relay (Peer._relay), with LIVELOOP_METRICS_BIND set or not.
    for name, metrics in (("count, metrics on", Metrics(process=False)),
                          ("count, metrics off", Metrics(enabled=False))):
        relayed_count = metrics.relayed

        def count(counts: Mapping[type[events.Relayed], Increment] = relayed_count) -> None:
            counts[type(event)].inc()

        measure(name, count)


if __name__ == "__main__":
    main()
