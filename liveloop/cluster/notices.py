"""What nodes tell each other, sans-IO: notices as frozen classes and their wire text.

A notice names the person it is for (``sid``) and that person's node. The node that
made it (from a script's result, or from a relay) applies it itself when the person is
its own, and otherwise publishes its text on the person's node's channel, where that
node decodes and applies it. The text is a JSON array whose first item is the kind:

- ``["M", sid, node, ticket, room, partner, partner_node, partner_name, partner_image,
  initiator]``: you are matched;
- ``["E", sid, node, room]``: your room has ended;
- ``["D", sid, node, room, event, payload]``: your partner relayed ``event``.

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
from typing import Any

import attrs


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
    sid: str
    node: str
    room_id: str
    event: str
    payload: Any = attrs.field(eq=False)


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
    if kind == "D" and len(fields) == 6:
        return DeliverNotice(str(fields[1]), str(fields[2]), str(fields[3]), str(fields[4]),
                             fields[5])
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
    if isinstance(notice, DeliverNotice):
        return json.dumps(["D", notice.sid, notice.node, notice.room_id, notice.event,
                           notice.payload], separators=(",", ":"))
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


def decode(text: str | bytes) -> Notice:
    """A notice from its wire text; raises :class:`BadNotice`."""
    try:
        fields = json.loads(text)
    except ValueError as error:
        raise BadNotice(str(error)) from None
    if not isinstance(fields, list) or not fields:
        raise BadNotice("not a JSON array")
    return _from_fields(fields)
