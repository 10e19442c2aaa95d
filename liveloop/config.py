"""The one configuration object, built once from ``LIVELOOP_*`` variables or flags.

Every setting has a field here, a default, an environment variable (the field name in
upper case behind ``LIVELOOP_``) and a command-line flag (the field name with dashes).
Nothing else in the package reads the environment: the object is passed down.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

_ENV_PREFIX = "LIVELOOP_"


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    """The converter of the tuple fields (``tuple`` itself would type their parameter as
    an ``Iterable`` of anything)."""
    return tuple(values)


def _upper(text: str) -> str:
    return text.upper()


def _parse_origins(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _replay_fits_outbox(settings: Settings, field: attrs.Attribute[int], value: int) -> None:
    """With recovery on, a replay of a whole history must fit a client's outbox, with the
    CONNECT answer that follows it: the replay goes through the outbox all at once, and
    an outbox that would overflow closes the session. Below the outbox's bound, then;
    equal would depend on the transport having taken some of it in between."""
    outbox = {"recovery_packets": ("outbox_size", settings.outbox_size),
              "recovery_bytes": ("outbox_bytes", settings.outbox_bytes)}[field.name]
    if settings.recovery_window > 0 and value >= outbox[1]:
        raise ValueError(
            f"{field.name} ({value}) must be below {outbox[0]} ({outbox[1]}): a recovery "
            f"replays up to {field.name} through the client's outbox, which would "
            f"overflow and close the session; lower {field.name}, raise {outbox[0]}, or "
            "turn recovery off (recovery_window 0)")


@attrs.frozen(kw_only=True)
class Settings:
    """All of Live Loop's settings. Durations are seconds, sizes are bytes or characters."""

    # Where to listen (``liveloop serve``); hypercorn's own flags win under ``hypercorn``.
    bind: str = attrs.field(default="127.0.0.1:3000", metadata={"help": "HOST:PORT to listen on"})
    path: str = attrs.field(default="/socket.io/", metadata={"help": "Engine.IO endpoint path"})
    workers: int = attrs.field(
        default=1, metadata={"help": "worker processes for liveloop serve (docs/deploy.md)"}
    )
    certfile: str = attrs.field(
        default="", metadata={"help": "PEM certificate chain: serve HTTPS (with keyfile)"}
    )
    keyfile: str = attrs.field(default="", metadata={"help": "PEM private key for certfile"})

    # Engine.IO
    ping_interval: float = attrs.field(default=25.0, metadata={"help": "seconds between pings"})
    ping_timeout: float = attrs.field(default=20.0, metadata={"help": "seconds to wait for pong"})
    max_payload: int = attrs.field(
        default=100_000, metadata={"help": "largest packet or polling body, bytes"}
    )
    connect_timeout: float = attrs.field(
        default=10.0, metadata={"help": "seconds a session may stay without a namespace"}
    )
    upgrade_timeout: float = attrs.field(
        default=10.0, metadata={"help": "seconds an upgrade may take"}
    )
    max_attachments: int = attrs.field(
        default=10, metadata={"help": "binary attachments in one Socket.IO packet"}
    )
    max_packets_per_payload: int = attrs.field(
        default=256, metadata={"help": "packets in one polling body"}
    )
    outbox_size: int = attrs.field(
        default=512, metadata={"help": "packets queued for one client before it is dropped"}
    )
    mailbox_size: int = attrs.field(
        default=256, metadata={"help": "messages queued for one connection actor"}
    )
    allowed_origins: tuple[str, ...] = attrs.field(
        default=(),
        converter=_strings,
        metadata={"help": "comma-separated allowed Origins, or *; empty: same origin only"},
    )
    max_sessions: int = attrs.field(
        default=100_000,
        metadata={"help": "Engine.IO sessions at most; over it a handshake gets 503"},
    )
    body_timeout: float = attrs.field(
        default=10.0, metadata={"help": "seconds to read a polling request body"}
    )
    header_timeout: float = attrs.field(
        default=5.0, metadata={"help": "seconds to send a request head (and idle keep-alive)"}
    )
    outbox_bytes: int = attrs.field(
        default=1_048_576,
        metadata={"help": "bytes (characters of text) queued for one client before it is dropped"},
    )
    max_connections_per_ip: int = attrs.field(
        default=64, metadata={"help": "open TCP connections from one client address"}
    )
    handshakes_per_ip: int = attrs.field(
        default=20, metadata={"help": "new sessions from one client address per handshake window"}
    )
    handshake_window: float = attrs.field(
        default=10.0, metadata={"help": "seconds of handshakes_per_ip's window"}
    )
    trusted_proxies: tuple[str, ...] = attrs.field(
        default=(),
        converter=_strings,
        metadata={"help": "comma-separated proxy addresses or CIDRs whose X-Forwarded-For counts"},
    )
    drain_timeout: float = attrs.field(
        default=30.0, metadata={"help": "seconds calls may go on after SIGTERM (liveloop serve)"}
    )

    # Live Loop
    rate_limits: bool = attrs.field(default=True, metadata={"help": "on or off, for load tests"})
    request_room_per: float = attrs.field(
        default=5.0, metadata={"help": "seconds between two request-room from one client"}
    )
    messages_per_minute: int = attrs.field(
        default=10, metadata={"help": "newMessage events per client per minute"}
    )
    pair_cooldown: float = attrs.field(
        default=60.0, metadata={"help": "seconds two people are not re-paired after Next"}
    )
    requeue_partner: bool = attrs.field(
        default=True, metadata={"help": "put the partner back in the queue when a call ends"}
    )
    max_queue: int = attrs.field(default=10_000, metadata={"help": "people waiting at most"})
    max_name: int = attrs.field(default=40, metadata={"help": "display name, characters"})
    max_image: int = attrs.field(
        default=65_536, metadata={"help": "thumbnail data URL, characters"}
    )
    max_message: int = attrs.field(default=1_000, metadata={"help": "chat message, characters"})
    max_sdp: int = attrs.field(default=20_000, metadata={"help": "SDP text, characters"})
    max_candidate: int = attrs.field(
        default=2_000, metadata={"help": "ICE candidate JSON, characters"}
    )
    status_users: int = attrs.field(
        default=50, metadata={"help": "names listed by /api/status at most"}
    )
    relay_budget: int = attrs.field(
        default=200, metadata={"help": "relayed events per 10 s per connection; 0: no limit"}
    )

    # ICE servers handed to clients (get-ice-servers); docs/turn.md
    stun_urls: tuple[str, ...] = attrs.field(
        default=(), converter=_strings, metadata={"help": "comma-separated stun: URLs"}
    )
    turn_urls: tuple[str, ...] = attrs.field(
        default=(), converter=_strings,
        metadata={"help": "comma-separated turn:/turns: URLs (needs a TURN secret)"},
    )
    # repr=False: the secret never reaches a log, even when the settings are printed.
    turn_secret: str = attrs.field(
        default="", repr=False,
        metadata={"help": "coturn static-auth-secret (prefer turn_secret_file)"},
    )
    turn_secret_file: str = attrs.field(
        default="", metadata={"help": "file holding the TURN secret (first line)"}
    )
    turn_ttl: int = attrs.field(
        default=600, metadata={"help": "seconds a TURN credential is valid"}
    )
    ice_servers_per_minute: int = attrs.field(
        default=10, metadata={"help": "get-ice-servers events per client per minute"}
    )

    # Operations: metrics and logs
    metrics_bind: str = attrs.field(
        default="", metadata={"help": "HOST:PORT of the Prometheus metrics listener; empty: off"}
    )
    log_format: str = attrs.field(
        default="text", validator=attrs.validators.in_(("text", "json")),
        metadata={"help": "text, or json (one JSON object a line)"},
    )
    log_level: str = attrs.field(
        default="INFO",
        validator=attrs.validators.in_(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
        converter=_upper, metadata={"help": "DEBUG, INFO, WARNING, ERROR or CRITICAL"},
    )
    log_client_addresses: bool = attrs.field(
        default=False, metadata={"help": "on: client IP addresses may appear in logs"}
    )

    # Connection state recovery (docs/recovery.md)
    recovery_window: float = attrs.field(
        default=20.0,
        metadata={"help": "seconds a lost connection's session waits for its client; 0: off"},
    )
    recovery_packets: int = attrs.field(
        default=256, validator=_replay_fits_outbox,
        metadata={"help": "events kept per client for a replay"},
    )
    recovery_bytes: int = attrs.field(
        default=262_144, validator=_replay_fits_outbox,
        metadata={"help": "bytes of events kept per client for a replay"},
    )

    # Several nodes sharing one queue (docs/cluster.md); empty: one process, in memory.
    redis_url: str = attrs.field(
        default="", metadata={"help": "redis:// URL of the shared Valkey/Redis; empty: none"}
    )
    node_timeout: float = attrs.field(
        default=5.0, metadata={"help": "seconds until a silent node is declared lost"}
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build the settings from ``LIVELOOP_*`` variables; ``overrides`` win over them."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            raw = env.get(_ENV_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = _convert(field, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one ``--flag`` per setting; each defaults to None meaning 'not given'."""
        for field in attrs.fields(cls):
            flag = "--" + field.name.replace("_", "-")
            parser.add_argument(
                flag, dest=field.name, default=None, metavar=field.name.upper(),
                type=functools.partial(_convert, field),
                help=f"{field.metadata.get('help', '')} (default {field.default!r};"
                f" env {_ENV_PREFIX}{field.name.upper()})",
            )

    @classmethod
    def from_args(
        cls, namespace: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Environment first, then the flags that were given on the command line."""
        given = {f.name: getattr(namespace, f.name, None) for f in attrs.fields(cls)}
        return cls.from_env(environ, **given)

    def conformance(self) -> Settings:
        """The settings that the official protocol test suites expect. The suites' ping
        interval (0.3 s) and timeout (0.2 s) replace only values left at their defaults:
        a test of our own on a loaded machine may keep the 0.3 s cycle but give the pong
        more than 0.2 s (``LIVELOOP_PING_TIMEOUT``), so that it cannot fail by chance."""
        fields = attrs.fields(Settings)
        ping_interval = (0.3 if self.ping_interval == fields.ping_interval.default
                         else self.ping_interval)
        ping_timeout = (0.2 if self.ping_timeout == fields.ping_timeout.default
                        else self.ping_timeout)
        return attrs.evolve(self, ping_interval=ping_interval, ping_timeout=ping_timeout,
                            max_payload=1_000_000,
                            allowed_origins=("*",),
                            # The suites handshake hundreds of times from one address.
                            handshakes_per_ip=1_000_000, max_connections_per_ip=1_000_000,
                            recovery_window=0.0)


def _convert(field: attrs.Attribute[Any], raw: str) -> Any:
    kind = field.type
    if kind in ("bool", bool):
        return _parse_bool(raw)
    if kind in ("int", int):
        return int(raw)
    if kind in ("float", float):
        return float(raw)
    if kind in ("tuple[str, ...]",):
        return _parse_origins(raw)
    return raw


def describe() -> Sequence[tuple[str, str, str]]:
    """(environment variable, default, help) for every setting, for docs and ``--help``."""
    return [
        (_ENV_PREFIX + f.name.upper(), repr(f.default), str(f.metadata.get("help", "")))
        for f in attrs.fields(Settings)
    ]
