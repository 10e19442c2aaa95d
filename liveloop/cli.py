"""The ``liveloop`` command: ``serve``, ``conformance`` and ``bench``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import trio

from . import logs
from .config import Settings

if TYPE_CHECKING:
    from .app import RootApp

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liveloop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the Live Loop server")
    Settings.add_arguments(serve)
    conformance = commands.add_parser(
        "conformance", help="run the app the official protocol test suites expect"
    )
    Settings.add_arguments(conformance)
    try:
        from .bench.cli import add_bench_parser
    except ImportError:  # the benchmark's own extras are optional
        pass
    else:
        add_bench_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns the process exit status."""
    args = _parser().parse_args(argv)
    if args.command in ("serve", "conformance"):
        try:
            settings = Settings.from_args(args)
        except ValueError as exc:  # a bad LIVELOOP_* value or flag: say what, no traceback
            print(f"liveloop {args.command}: {exc}", file=sys.stderr)
            return 2
        logs.configure(settings)
        make_app: Callable[[Settings], RootApp]
        if args.command == "serve":
            from .app import create_app as make_app
        else:
            from .conformance import create_conformance_app as make_app
        if args.command == "serve" and settings.workers > 1 and not settings.redis_url:
            print("liveloop serve: --workers above 1 needs LIVELOOP_REDIS_URL (the workers"
                  " share the queue and rooms there); see docs/deploy.md", file=sys.stderr)
            return 2
        if settings.workers > 1 and settings.certfile:
            print("liveloop serve: --workers above 1 does not terminate TLS (a TLS"
                  " connection cannot be passed between workers); put a TLS proxy in"
                  " front, see docs/deploy.md", file=sys.stderr)
            return 2
        if settings.workers != 1:
            from .workers import run_workers

            return run_workers(settings, make_app)
        app = make_app(settings)
        from .serve import serve

        try:
            trio.run(partial(serve, app, settings))
        except KeyboardInterrupt:
            return 0
        except Exception:
            # A crash of the matchmaker (or any other task the process needs): logged
            # once, through logging, and the process fails.
            log.critical("Live Loop stopped: a task crashed", exc_info=True)
            return 1
        return 0
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        print(f"unknown command {args.command}", file=sys.stderr)
        return 2
    return int(handler(args))
