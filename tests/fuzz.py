"""Hostile inputs for the fuzz test (:mod:`tests.test_fuzz`), from a seeded ``Random``.

Each generator returns bytes or text a client could send: broken HTTP, WebSocket frames
that break RFC 6455, Engine.IO and Socket.IO packets that break their specifications,
and Live Loop events whose fields hold values of every JSON type. They build on valid
templates and mutate them, so that most inputs get past the first check and reach the
deeper ones. WebSocket frames are built by hand here (the server's own framing code is
what is under test); well-formed sessions use wsproto.
"""

from __future__ import annotations

import base64
import json
import os
import random
import struct
from typing import Any

PATH = "/socket.io/"
HANDSHAKE = f"{PATH}?EIO=4&transport=polling"
WEBSOCKET = f"{PATH}?EIO=4&transport=websocket"

EVENTS: dict[str, dict[str, Any]] = {
    "request-room": {"name": "Ann", "roomId": None, "userImage": "data:image/png;base64,AA=="},
    "negotiation-call-offer": {"offer": {"type": "offer", "sdp": "v=0\r\n"}, "roomId": "r",
                               "remoteSocketId": "s", "name": "A"},
    "negotiation-call-answer": {"ans": {"type": "answer", "sdp": "v=0\r\n"}, "roomId": "r",
                                "remoteSocketId": "s", "name": "A"},
    "send-new-ice-candidates": {"to": "s", "candidate": {
        "candidate": "candidate:1 1 udp 1 192.0.2.1 5000 typ host", "sdpMid": "0",
        "sdpMLineIndex": 0, "usernameFragment": "f00d"}},
    "stop-call": {"roomId": "r", "remoteSocketId": "s", "name": "A"},
    "newMessage": {"message": "hi", "roomId": "r", "remoteSocket": "s"},
    "get-ice-servers": {},
}
"""A valid payload of every inbound Live Loop event, each field present."""

_SPECIAL_TEXT = ["", " ", "\u202e", "\ud800", "\x00", "\u2028", "offer", "answer",
                 "pranswer", "__proto__", "constructor", "{{}}", "\x1e", "é" * 50,
                 "x" * 70_000, "x" * 200_000]


class Fuzz:
    """One worker's generators, over its own seeded ``Random``."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.small = False
        """Only values a connection must survive: no nesting past the codec's depth
        limit, no text near ``max_payload`` (both close the connection, by design)."""

    # -- JSON ---------------------------------------------------------------------

    def json_value(self, depth: int = 0) -> Any:
        """Any JSON value: every type, extremes, deep nesting now and then."""
        r = self.r
        kind = r.randrange(12 if depth < 3 else 8)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice([True, False])
        if kind == 2:
            return r.choice([0, -1, 1, 65535, 65536, 2**53, -(2**63), 10**30, 3])
        if kind == 3:
            return r.choice([0.5, -0.0, 1e308, 1e-300, 3.0])
        if kind in (4, 5, 6):
            if r.random() < 0.5:
                return r.choice(_SPECIAL_TEXT[:-2] if self.small else _SPECIAL_TEXT)
            return self.text()
        if kind == 7:
            return {"_placeholder": True, "num": r.choice([0, 1, -1, 99, "0", None])}
        if kind in (8, 9):
            return [self.json_value(depth + 1) for _ in range(r.randrange(4))]
        if kind == 10:
            return {self.text(8): self.json_value(depth + 1) for _ in range(r.randrange(4))}
        nested: Any = 0
        for _ in range(r.choice([50, 80] if self.small else [50, 99, 101, 200, 500])):
            nested = [nested]
        return nested

    def text(self, size: int = 40) -> str:
        r = self.r
        return "".join(chr(r.choice([r.randrange(32, 127), r.randrange(0x110000)]))
                       for _ in range(r.randrange(size)))

    def payload(self, event: str) -> Any:
        """``event``'s valid payload with one field (at any depth) replaced, removed,
        or the whole payload replaced."""
        r = self.r
        if r.random() < 0.15 or not EVENTS[event]:
            return self.json_value()
        payload = json.loads(json.dumps(EVENTS[event]))
        target = payload
        while True:
            key = r.choice(list(target))
            if isinstance(target[key], dict) and r.random() < 0.6:
                target = target[key]
                continue
            if r.random() < 0.15:
                del target[key]
            else:
                target[key] = self.json_value()
            return payload

    # -- Socket.IO / Engine.IO ------------------------------------------------------

    def socketio_packet(self) -> list[str | bytes]:
        """One Socket.IO packet (text part first, then attachments), mostly broken."""
        r = self.r
        choice = r.randrange(10)
        if choice < 4:  # a Live Loop event with a wrong-typed field, maybe an ack id
            event = r.choice([*EVENTS, "unknown", "disconnect", "connect", ""])
            ack = str(r.randrange(10**6)) if r.random() < 0.7 else ""
            data = json.dumps([event, self.payload(event if event in EVENTS else "stop-call")])
            return ["2" + ack + data]
        if choice == 4:  # attachments: counts and placeholders that do not match
            count = r.choice([0, 1, 2, 11, 10**10, -1])
            num = r.choice([0, 1, 5, -1, "0", None])
            head = r.choice(["5", "6"]) + f"{count}-" + r.choice(["", "/", "/x,"])
            head += r.choice(["", "7", "99999999999999999"])
            body = json.dumps(["newMessage", {"message": {"_placeholder": True, "num": num}}])
            attachments = [os.urandom(r.randrange(20))
                           for _ in range(r.randrange(4))]
            return [head + body, *attachments]
        if choice == 5:  # acks nobody asked for, with odd ids and data
            ack = r.choice(["", "0", "-1", "1" * 17, "9007199254740993", "00"])
            return ["3" + ack + json.dumps(self.json_value())]
        if choice == 6:  # CONNECT / DISCONNECT / CONNECT_ERROR, to odd namespaces
            return [r.choice("0146") + r.choice(["", "/", "/nope,", "/" + "x" * 300 + ","])
                    + r.choice(["", "{}", "[]", "1", '"x"', json.dumps(self.json_value())])]
        if choice == 7:  # a text packet where an attachment was expected, and vice versa
            return ["51-" + json.dumps(["x", {"_placeholder": True, "num": 0}]), "40"]
        if choice == 8:
            return [r.choice(["", "7", "9", "2", "2[", "2[]", "2{}", "2[1]", "2null",
                              "2[\"a\"" + "," * 10, "2" + "[" * 5000])]
        return [self.text(60)]

    def engineio_text(self) -> str:
        """Engine.IO text packets as a client must never send them on an open session,
        or mangled: opens, pings, upgrades, unknown types, empty."""
        return self.r.choice(["", "0", "2", "2probe", "3", "5", "7", "8x", "b", "bAAA=",
                              "6", "1", "4", "\x1e", "4" + self.text(20)])

    def polling_body(self, packets: list[str | bytes]) -> bytes:
        """A polling POST body: ``packets`` framed as Engine.IO payload, then mangled."""
        r = self.r
        records = ["4" + p if isinstance(p, str) else "b" + base64.b64encode(p).decode()
                   for p in packets]
        if r.random() < 0.3:
            records.append(self.engineio_text())
        body = "\x1e".join(records).encode("utf-8", "surrogatepass")
        mangle = r.randrange(8)
        if mangle == 0:
            return os.urandom(r.randrange(200))
        if mangle == 1:
            return body[: r.randrange(len(body) + 1)]
        if mangle == 2:
            return body + b"\x1e" * r.randrange(1, 4)
        if mangle == 3:
            return b"b" + body  # a base64 record that is not base64
        if mangle == 4:
            return b"\xff\xfe" + body  # not UTF-8
        return body

    # -- WebSocket frames, by hand ----------------------------------------------------

    def frame(self, payload: bytes, opcode: int = 1, *, fin: bool = True, rsv: int = 0,
              masked: bool = True, length: int | None = None) -> bytes:
        """One frame; ``length`` overrides the declared length."""
        size = len(payload) if length is None else length
        head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
        mask_bit = 0x80 if masked else 0
        if size < 126:
            head += bytes([mask_bit | size])
        elif size < 65536:
            head += bytes([mask_bit | 126]) + struct.pack("!H", size)
        else:
            head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
        if not masked:
            return head + payload
        key = os.urandom(4) if self.r.random() < 0.5 else b"\x00\x00\x00\x00"
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))

    def bad_frames(self) -> bytes:
        """Frames that break RFC 6455, or Engine.IO, or both."""
        r = self.r
        choice = r.randrange(12)
        first = self.socketio_packet()[0]
        assert isinstance(first, str)  # the text part comes first
        text = ("4" + first).encode("utf-8", "surrogatepass")
        if choice == 0:
            return os.urandom(r.randrange(1, 64))
        if choice == 1:
            return self.frame(text, masked=False)  # a client's frames must be masked
        if choice == 2:
            return self.frame(text, rsv=r.randrange(1, 8))
        if choice == 3:
            return self.frame(b"", opcode=r.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]))
        if choice == 4:
            return self.frame(b"\xff\xfe\xc0", opcode=1)  # text that is not UTF-8
        if choice == 5:
            return self.frame(b"x" * 10, opcode=r.choice([8, 9, 10]), fin=False)
        if choice == 6:
            return self.frame(b"p" * 126, opcode=9)  # a control frame over 125 bytes
        if choice == 7:
            return self.frame(r.choice([b"\x03", b"\x03\xe7", b"\x00\x00", b"\x03\xe8\xff",
                                        b"\x0b\xb8", b"\x03\xec"]), opcode=8)
        if choice == 8:
            return self.frame(b"", length=r.choice([2**63 - 1, 2**40, 10**6]))
        if choice == 9:  # a continuation with nothing to continue, or a message mid-message
            return (self.frame(b"a", opcode=0) if r.random() < 0.5
                    else self.frame(b"4a", fin=False) + self.frame(b"4b", opcode=1))
        if choice == 10:  # a frame cut short; what follows is read as its rest
            whole = self.frame(text)
            return whole[: r.randrange(len(whole))]
        return self.frame(self.engineio_text().encode("utf-8", "surrogatepass"))

    # -- HTTP -----------------------------------------------------------------------

    def http_request(self) -> bytes:
        """Broken, pipelined or truncated HTTP/1.x requests."""
        r = self.r
        choice = r.randrange(10)
        if choice == 0:
            return os.urandom(r.randrange(1, 300))
        requests = [self._request() for _ in range(r.choice([1, 1, 2, 5, 30]))]
        data = b"".join(requests)
        if choice == 1:
            return data[: r.randrange(len(data) + 1)]
        if choice == 2:  # a byte flipped somewhere in the heads
            i = r.randrange(len(data))
            return data[:i] + bytes([r.randrange(256)]) + data[i + 1:]
        return data

    def _request(self) -> bytes:
        r = self.r
        method = r.choice([b"GET", b"POST", b"OPTIONS", b"PUT", b"DELETE", b"HEAD",
                           b"CONNECT", b"G\x00T", b"", b"PRI"])
        target = r.choice([HANDSHAKE.encode(), b"/", b"/api/status", WEBSOCKET.encode(),
                           f"{PATH}?EIO=4&transport=polling&sid=nope".encode(),
                           f"{PATH}?EIO=3&transport=polling".encode(),
                           f"{PATH}?EIO=4&transport=carrier-pigeon".encode(),
                           b"*", b"http://evil/", b"/%ff%fe", b"/\xff", b"/" + b"a" * 9000,
                           f"{PATH}?EIO=4&EIO=5&transport=polling&sid=&sid=x".encode()])
        version = r.choice([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9",
                            b"", b"HTTP/1.1 extra"])
        headers = [b"Host: t"] if r.random() < 0.9 else []
        extras = [
            b"Connection: close", b"Connection: keep-alive, Upgrade", b"Upgrade: websocket",
            b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            b"Sec-WebSocket-Version: 8", b"Sec-WebSocket-Key: ", b"Origin: https://evil",
            b"Origin: null", b"Origin: https://t:99999", b"Host: t:x", b"Host: [::1",
            b"Content-Length: 5", b"Content-Length: -1", b"Content-Length: 99999999999",
            b"Content-Length: 1, 2", b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip, chunked", b"Expect: 100-continue",
            b"X-Big: " + b"a" * r.choice([100, 9000, 20000]), b"Bad Header: x",
            b":path: /", b"X-Nul: \x00", b"X-Fold:\r\n folded", b"Content-Type: text/plain",
        ]
        headers += r.sample(extras, r.randrange(4))
        body = r.choice([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n",
                         b"1\x1e40", os.urandom(10)])
        return method + b" " + target + b" " + version + b"\r\n" + b"\r\n".join(
            headers) + b"\r\n\r\n" + body
