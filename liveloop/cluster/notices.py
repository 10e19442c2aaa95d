"""What nodes tell each other, sans-IO: notices as frozen classes and their wire text.

A notice names the person it is for (``sid``) and that person's node. The node that
made it (from a script's result, or from a relay) applies it itself when the person is
its own, and otherwise publishes its text on the person's node's channel, where that
node decodes and applies it. The text is a JSON array whose first item is the kind:

- ``["M", sid, node, ticket, room, partner, partner_node, partner_name, partner_image,
  initiator]``: you are matched;
- ``["E", sid, node, room]``: your room has ended;
- ``["D", sid, node, room, [event, payload]]``: your partner relayed ``event``. The
  last item is the event's JSON exactly as a Socket.IO packet carries it to the client
  (compact, non-ASCII as is), so the receiving node slices it out of the text and writes
  it to the client without decoding or encoding the payload
  (:meth:`~liveloop.server.sockets.NamespaceSocket.emit_json`).

Connection state recovery across nodes (docs/cluster.md) adds:

- ``["C", pid, node, token, claimant, namespace]``: a client with this ``pid`` is back
  on ``claimant``; hand its record over (to the node holding it);
- ``["H", node, token, record]``: the answer, ``record`` the exported record or null;
- ``["V", sid, node, room, who, to]``: your partner ``who`` in ``room`` now lives on
  ``to``;
- ``["F", sid, node, room]``: a fence: the partner's last word the old way;
- ``["L", sid, node, room, who]``: your partner ``who``'s node is lost; they may
  recover elsewhere within the window: keep what you relay to them meanwhile;
- ``["W", sid, node, notice]``: ``notice`` (text), forwarded by the node that ``sid``
  left; applied at once, where a notice that came straight may wait for the fence.
"""

from __future__ import annotations

import json
import json.decoder
from typing import Any

import attrs

from ..wire.fastjson import compact_encoder
from ..wire.socketio import event_json

_compact = compact_encoder(ensure_ascii=True, allow_nan=True)  # as json.dumps
_scan = json.decoder.scanstring  # type: ignore[attr-defined]  # CPython's C scanner: one JSON string from an index


@attrs.frozen
class MatchNotice:
    sid: str
    node: str
    ticket: int
    room_id: str
    partner: str
    partner_node: str
    partner_name: str
    partner_image: str
    initiator: bool


@attrs.frozen
class EndNotice:
    sid: str
    node: str
    room_id: str


@attrs.frozen
class DeliverNotice:
    """``args`` is the JSON text of ``[event, payload]`` (:func:`~liveloop.wire.socketio
    .event_json`), carried and handed on as it is."""

    sid: str
    node: str
    room_id: str
    event: str
    args: str


@attrs.frozen
class ClaimNotice:
    pid: str
    node: str
    token: str
    claimant: str
    namespace: str


@attrs.frozen
class HandoverNotice:
    node: str
    token: str
    record: Any = attrs.field(eq=False)


@attrs.frozen
class MovedNotice:
    sid: str
    node: str
    room_id: str
    who: str
    to: str


@attrs.frozen
class FenceNotice:
    sid: str
    node: str
    room_id: str


@attrs.frozen
class LostNotice:
    sid: str
    node: str
    room_id: str
    who: str


@attrs.frozen
class ForwardedNotice:
    sid: str
    node: str
    notice: str


PersonNotice = (MatchNotice | EndNotice | DeliverNotice | MovedNotice | FenceNotice
                | LostNotice)
"""The notices for one person (``sid``) on their node."""

Notice = PersonNotice | ClaimNotice | HandoverNotice | ForwardedNotice


class BadNotice(ValueError):
    """A notice that does not decode: logged and dropped by the receiving node."""


def from_script(items: list[Any]) -> list[PersonNotice]:
    """The notices in a script's result (flat arrays, see :mod:`.scripts`)."""
    notices: list[PersonNotice] = []
    for item in items:
        notices.append(_from_fields([str(field) for field in item]))  # type: ignore[arg-type]
    return notices


def _from_fields(fields: list[Any]) -> Notice:
    kind = fields[0]
    if kind == "M" and len(fields) == 10:
        return MatchNotice(str(fields[1]), str(fields[2]), int(fields[3]), str(fields[4]),
                           str(fields[5]), str(fields[6]), str(fields[7]), str(fields[8]),
                           str(fields[9]) in ("1", "True", "true"))
    if kind == "E" and len(fields) == 4:
        return EndNotice(str(fields[1]), str(fields[2]), str(fields[3]))
    if (kind == "D" and len(fields) == 5 and isinstance(fields[4], list) and fields[4]
            and isinstance(fields[4][0], str)):
        # Not the text a node writes (that one takes _delivered's way): encoded afresh.
        return DeliverNotice(str(fields[1]), str(fields[2]), str(fields[3]), fields[4][0],
                             event_json(fields[4][0], fields[4][1:]))
    if kind == "C" and len(fields) == 6:
        return ClaimNotice(*(str(field) for field in fields[1:]))
    if kind == "H" and len(fields) == 4:
        return HandoverNotice(str(fields[1]), str(fields[2]), fields[3])
    if kind == "V" and len(fields) == 6:
        return MovedNotice(*(str(field) for field in fields[1:]))
    if kind == "F" and len(fields) == 4:
        return FenceNotice(str(fields[1]), str(fields[2]), str(fields[3]))
    if kind == "L" and len(fields) == 5:
        return LostNotice(*(str(field) for field in fields[1:]))
    if kind == "W" and len(fields) == 4:
        return ForwardedNotice(str(fields[1]), str(fields[2]), str(fields[3]))
    raise BadNotice(f"not a notice: {str(fields)[:80]}")


def encode(notice: Notice) -> str:
    """The notice's wire text."""
    if isinstance(notice, DeliverNotice):  # one per relay across nodes
        head = _compact(["D", notice.sid, notice.node, notice.room_id])
        return f"{head[:-1]},{notice.args}]"
    if isinstance(notice, EndNotice):
        return json.dumps(["E", notice.sid, notice.node, notice.room_id])
    if isinstance(notice, ClaimNotice):
        return json.dumps(["C", notice.pid, notice.node, notice.token, notice.claimant,
                           notice.namespace])
    if isinstance(notice, HandoverNotice):
        return json.dumps(["H", notice.node, notice.token, notice.record],
                          separators=(",", ":"))
    if isinstance(notice, MovedNotice):
        return json.dumps(["V", notice.sid, notice.node, notice.room_id, notice.who,
                           notice.to])
    if isinstance(notice, FenceNotice):
        return json.dumps(["F", notice.sid, notice.node, notice.room_id])
    if isinstance(notice, LostNotice):
        return json.dumps(["L", notice.sid, notice.node, notice.room_id, notice.who])
    if isinstance(notice, ForwardedNotice):
        return json.dumps(["W", notice.sid, notice.node, notice.notice],
                          separators=(",", ":"))
    return json.dumps(["M", notice.sid, notice.node, notice.ticket, notice.room_id,
                       notice.partner, notice.partner_node, notice.partner_name,
                       notice.partner_image, int(notice.initiator)])


def _delivered(text: str) -> DeliverNotice | None:
    """A relay's notice, its payload not decoded: ``["D","sid","node","room",["event",``
    as :func:`encode` writes it, then the rest of ``[event, payload]`` up to the closing
    ``]]``, taken as it is (it comes from a node, which encoded it). None for any other
    text, which the caller decodes in full."""
    try:
        sid, end = _scan(text, 6)
        if text[end:end + 2] != ',"':
            return None
        node, end = _scan(text, end + 2)
        if text[end:end + 2] != ',"':
            return None
        room_id, end = _scan(text, end + 2)
        if text[end:end + 3] != ',["' or text[-2:] != "]]":
            return None
        event, _ = _scan(text, end + 3)
    except ValueError:
        return None
    return DeliverNotice(sid, node, room_id, event, text[end + 1:-1])


def decode(text: str | bytes) -> Notice:
    """A notice from its wire text; raises :class:`BadNotice`."""
    if isinstance(text, bytes) and text[:6] == b'["D","':
        try:
            text = text.decode()
        except UnicodeDecodeError as error:
            raise BadNotice(str(error)) from None
    if isinstance(text, str) and text[:6] == '["D","':
        notice = _delivered(text)
        if notice is not None:
            return notice
    try:
        fields = json.loads(text)
    except ValueError as error:
        raise BadNotice(str(error)) from None
    if not isinstance(fields, list) or not fields:
        raise BadNotice("not a JSON array")
    try:
        return _from_fields(fields)
    except (ValueError, TypeError) as error:  # a field of the wrong kind: one notice lost
        raise BadNotice(f"{type(error).__name__}: {error}") from None
