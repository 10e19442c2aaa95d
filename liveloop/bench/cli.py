"""``liveloop bench``: load scenarios against a running Live Loop (or compatible) server."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .runner import BenchError, format_table, run
from .scenarios import BenchConfig

EPILOG = """\
Start the server with rate limits off, e.g.
  liveloop serve --bind 127.0.0.1:8000 --rate-limits off --relay-budget 0 \
      --handshakes-per-ip 1000000 --max-connections-per-ip 1000000
and pass its process id with --server-pid to get its CPU time and memory.

scenarios:
  relay  clients pair up; each sends ICE candidates to its partner at --rate per second
         for --duration seconds: sent, received, lost, one-way latency, server CPU/msg
  churn  clients request a room, end the call (stop-call or Next, --churn-mode) as soon as
         matched, and request again: matches/s, time to match, server CPU/match
  idle   --clients connections held open for --duration seconds: server memory per
         connection, CPU per connect, idle CPU
  slowhead  --clients TCP connections that never finish their request head, held
         --duration seconds (start the server with --header-timeout above that and
         --max-connections-per-ip above --clients): server memory per connection
  cuts   --clients / 2 pairs; one side of each goes through a proxy run by the bench that
         resets its connections every --cut-every seconds; ICE to it at --rate per second,
         chat from it (with ids, retried until acked) at --rate / 5: delivered,
         duplicated and lost relays each way, reconnections and how many recovered
         (runs in this process; --workers is ignored)
"""


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on the ``liveloop`` command's subparsers; sets ``handler``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="load-test a running server", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=("relay", "churn", "idle", "slowhead", "cuts"))
    parser.add_argument("--url", required=True,
                        help="the server, e.g. http://127.0.0.1:8000; several, comma-"
                             "separated, are used in turn (nodes sharing Redis)")
    parser.add_argument("--clients", type=int, default=100, help="clients (default 100)")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="relay: messages per second per client (default 1)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of load (default 10)")
    parser.add_argument("--workers", type=int, default=_default_workers(),
                        help="generator processes (default: the CPUs this process may use;"
                             " 0 runs inline, in this process)")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="the server's process id: report its CPU time and RSS")
    parser.add_argument("--also-pid", type=int, action="append", default=[],
                        help="another process counted with the server (a second node,"
                             " Redis); repeat as needed")
    parser.add_argument("--connect-concurrency", type=int, default=50,
                        help="handshakes in flight per worker (default 50)")
    parser.add_argument("--setup-timeout", type=float, default=120.0,
                        help="seconds to connect and pair everyone (default 120)")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="relay: seconds to wait for the last messages (default 5)")
    parser.add_argument("--churn-mode", choices=("stop", "next", "mix"), default="mix",
                        help="churn: how the initiator ends a call (default mix)")
    parser.add_argument("--cut-every", type=float, default=3.0,
                        help="cuts: seconds between two cuts of every proxied connection"
                             " (default 3)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress line on stderr")
    parser.set_defaults(handler=main)
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` the parsed arguments describe."""
    return BenchConfig(
        scenario=args.scenario, url=args.url, clients=args.clients, rate=args.rate,
        duration=args.duration, workers=max(0, args.workers), server_pid=args.server_pid,
        other_pids=tuple(args.also_pid),
        connect_concurrency=args.connect_concurrency, setup_timeout=args.setup_timeout,
        grace=args.grace, churn_mode=args.churn_mode,
        progress=not args.no_progress and sys.stderr.isatty(),
    )


def main(args: argparse.Namespace) -> int:
    """Run the bench; print the table (or JSON). 0 on success, 1 if the bench failed,
    3 if the server rate-limited the load."""
    if args.scenario == "cuts":
        import trio

        from .cuts import format_cuts, run_cuts

        cuts = trio.run(run_cuts, args.url, max(1, args.clients // 2), args.rate,
                        args.duration, args.cut_every, args.grace)
        print(json.dumps(cuts, indent=2) if args.json else format_cuts(cuts))
        return 0
    config = config_from_args(args)
    try:
        report = run(config)
    except BenchError as exc:
        print(f"liveloop bench: {exc}", file=sys.stderr)
        return 3 if "rate-limit" in str(exc) else 1
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0
