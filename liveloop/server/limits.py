"""Per-address limits: who a request comes from, and how much one address may open.

The client address is the socket's peer, unless that peer is a trusted proxy
(``trusted_proxies``): then it is the rightmost address of ``X-Forwarded-For`` that is not
itself a trusted proxy (a client can put anything on the left of that header; only what
our own proxies appended can be believed). A header that names nothing usable falls back
to the peer. A peer without an address (``""``: a Unix socket, which only a local process
can reach) is a trusted proxy; an IPv4 address seen through an IPv6 socket
(``::ffff:a.b.c.d``) is the IPv4 address.

Both counters below belong to one listener or one Engine.IO server and are used from
Trio tasks without awaiting in between, so they need no lock. Their memory is bounded by
the addresses active at once: an address leaves the connection count at its last close,
and the handshake table when its window has passed (swept once a window).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterable, Sequence

from .asgi import Scope

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(entries: Iterable[str]) -> tuple[_Network, ...]:
    """``trusted_proxies`` (addresses or CIDRs) as networks; raises ValueError for an
    entry that is neither."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def trusted(address: str, proxies: Sequence[_Network]) -> bool:
    """Whether ``address`` is one of ``proxies`` (or ``""``: a Unix socket's peer)."""
    if not address:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in proxies)


def _plain(address: str) -> str:
    """``address`` with an IPv4-mapped IPv6 address written as IPv4."""
    if address.startswith("::ffff:"):
        try:
            mapped = ipaddress.IPv6Address(address).ipv4_mapped
        except ValueError:
            return address
        if mapped is not None:
            return str(mapped)
    return address


def client_address(peer: str, forwarded_for: Sequence[bytes],
                   proxies: Sequence[_Network]) -> str:
    """The client's address: see the module docstring. ``forwarded_for`` holds every
    ``X-Forwarded-For`` header's value, in order."""
    peer = _plain(peer)
    if not forwarded_for or not trusted(peer, proxies):
        return peer
    hops = [hop.strip() for value in forwarded_for
            for hop in value.decode("latin-1").split(",")]
    for hop in reversed(hops):
        if not hop:
            continue
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # garbage where our proxy writes: believe nothing of it
        if not trusted(hop, proxies):
            return hop
    return peer  # every hop a proxy of ours


def scope_client(scope: Scope, proxies: Sequence[_Network]) -> str:
    """:func:`client_address` of an ASGI request."""
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    forwarded = [value for name, value in scope.get("headers", ())
                 if name == b"x-forwarded-for"]
    return client_address(peer, forwarded, proxies)


class ConnectionCount:
    """Open connections per address, at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._open)

    def open(self, address: str) -> bool:
        """Count a new connection from ``address``; False (and not counted) if that
        address has ``limit`` open already."""
        count = self._open.get(address, 0)
        if count >= self._limit:
            return False
        self._open[address] = count + 1
        return True

    def close(self, address: str) -> None:
        """A connection :meth:`open` counted has closed."""
        count = self._open[address] - 1
        if count:
            self._open[address] = count
        else:
            del self._open[address]


class HandshakeWindow:
    """New sessions per address: at most ``limit`` in ``window`` seconds from an
    address's first one (a fixed window per address, which starts again after it)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}
        """address -> (its window's start, handshakes in it)."""
        self._sweep_at = -math.inf

    def __len__(self) -> int:
        return len(self._seen)

    def allow(self, address: str) -> float | None:
        """Count a handshake from ``address``: None if allowed, else the seconds until
        its window ends (> 0)."""
        now = self._clock()
        if now >= self._sweep_at:
            self._sweep(now)
        start, count = self._seen.get(address, (now, 0))
        if now - start >= self._window:
            start, count = now, 0
        if count >= self._limit:
            return max(start + self._window - now, 0.001)
        self._seen[address] = (start, count + 1)
        return None

    def _sweep(self, now: float) -> None:
        window = self._window
        self._seen = {address: entry for address, entry in self._seen.items()
                      if now - entry[0] < window}
        self._sweep_at = now + window
