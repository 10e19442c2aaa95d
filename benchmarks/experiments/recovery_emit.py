"""What connection state recovery adds to one relayed event, without I/O or task switches.

    python benchmarks/experiments/recovery_emit.py

times ``NamespaceSocket.emit`` of a relayed ICE candidate (what a partner's session does
for each relay) into a session stub that takes the frame, with recovery on (offset
stamped, frame kept in a full 256-packet history) and off, alternately, five times each.
The difference is recovery's cost per relayed message; compare it with the server CPU per
relayed message that ``liveloop bench relay`` measures (docs/performance.md).
"""

from __future__ import annotations

import timeit
from typing import Any

from liveloop import events
from liveloop.config import Settings
from liveloop.server.recovery import MemoryStore
from liveloop.server.sockets import NamespaceSocket

N = 50_000
CANDIDATE = {
    "candidate": "candidate:842163049 1 udp 1677729535 192.168.1.10 51234 typ srflx raddr "
                 "10.0.0.5 rport 51234 generation 0 ufrag sK3a network-cost 999",
    "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "sK3a",
}


class _Session:
    """Takes frames as EngineSession.send_frame does (into a list, cleared as it fills)."""

    closed = False

    def __init__(self) -> None:
        self.frames: list[Any] = []

    def send_frame(self, frame: Any) -> None:
        frames = self.frames
        frames.append(frame)
        if len(frames) > 512:
            frames.clear()


def socket(recovery: bool) -> NamespaceSocket:
    sock = NamespaceSocket(_Session(), "/")  # type: ignore[arg-type]
    sock._connected = True
    sock._held = None
    if recovery:
        settings = Settings()
        sock.record = MemoryStore(settings).create(sock.sid, "/")
        for _ in range(settings.recovery_packets):  # a full ring: every keep evicts one
            sock.emit("warm-up", {})
    return sock


def main() -> None:
    payload = events.candidate_relayed(None) | {"candidate": CANDIDATE}
    results: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(5):
        for recovery in (False, True):
            sock = socket(recovery)

            def emit(s: NamespaceSocket = sock) -> None:
                s.emit("new-ice-candidates", payload)

            seconds = timeit.timeit(emit, number=N)
            results[recovery].append(seconds / N * 1e6)
    off, on = min(results[False]), min(results[True])
    print(f"emit, recovery off: {off:.2f} µs (best of 5)")
    print(f"emit, recovery on:  {on:.2f} µs (best of 5)")
    print(f"recovery adds {on - off:.2f} µs per relayed event")


if __name__ == "__main__":
    main()
