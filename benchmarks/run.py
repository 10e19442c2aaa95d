#!/usr/bin/env python3
"""Benchmark Live Loop against two baselines, in one command.

    python benchmarks/run.py                 # small scale, a minute or two
    python benchmarks/run.py --scale issue   # the issue's loads (several minutes)

For each server (Live Loop, python-socketio under uvicorn, the bare trio-websocket relay)
and each scenario, it starts a fresh server pinned to CPU 0, runs ``liveloop bench`` pinned
to CPU 1 (with ``--server-pid`` for the server's CPU time and RSS), stops the server, and
finally writes a markdown table of the figures and their ratios to
``benchmarks/results/latest.md`` (the raw reports to ``latest.json``) and prints it.
Needs ``uvicorn`` (``pip install 'uvicorn[standard]'``) for the python-socketio baseline;
servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from servers import (
    HERE,
    PYTHON,
    ROOT,
    children,
    free_port,
    liveloop_command,
    pinned,
    stop,
    wait_listening,
)

SERVERS: dict[str, tuple[str, Callable[[int], list[str]]]] = {
    "liveloop": ("Live Loop", liveloop_command),
    "psio": ("python-socketio + uvicorn", lambda port: [
        PYTHON, str(HERE / "baselines" / "psio_server.py"), "--port", str(port)]),
    "triows": ("bare trio-websocket relay", lambda port: [
        PYTHON, str(HERE / "baselines" / "trio_ws_relay.py"), "--port", str(port)]),
    # Live Loop's other entries (settings from LIVELOOP_*, see ENV below)
    "hypercorn-trio": ("hypercorn -k trio", lambda port: [
        str(Path(PYTHON).parent / "hypercorn"), "-k", "trio", "--bind",
        f"127.0.0.1:{port}", "liveloop.app:app"]),
    "hypercorn": ("hypercorn (asyncio, Trio as a guest)", lambda port: [
        str(Path(PYTHON).parent / "hypercorn"), "--bind", f"127.0.0.1:{port}",
        "liveloop.app:app"]),
    "hypercorn-uvloop": ("hypercorn -k uvloop (guest)", lambda port: [
        str(Path(PYTHON).parent / "hypercorn"), "-k", "uvloop", "--bind",
        f"127.0.0.1:{port}", "liveloop.app:app"]),
    "uvicorn": ("uvicorn (guest)", lambda port: [
        str(Path(PYTHON).parent / "uvicorn"), "--port", str(port), "--log-level", "warning",
        "liveloop.app:app"]),
}
WORKER_CHILD = {"hypercorn-trio", "hypercorn", "hypercorn-uvloop"}
"""Servers whose work is done by a worker process they start (hypercorn's one worker):
its CPU time is what is measured."""
ENV = {**os.environ, "LIVELOOP_RATE_LIMITS": "off"}

# name -> (scenario, bench arguments)
SCALES: dict[str, dict[str, tuple[str, list[str]]]] = {
    "small": {
        "relay 100 x 1/s": ("relay", ["--clients", "100", "--rate", "1", "--duration", "5"]),
        "relay 40 x 20/s": ("relay", ["--clients", "40", "--rate", "20", "--duration", "5"]),
        "churn 100": ("churn", ["--clients", "100", "--duration", "5"]),
        "idle 500": ("idle", ["--clients", "500", "--duration", "3"]),
    },
    "issue": {
        "relay 1000 x 1/s": ("relay", ["--clients", "1000", "--rate", "1", "--duration", "20"]),
        "relay 200 x 20/s": ("relay", ["--clients", "200", "--rate", "20", "--duration", "20"]),
        "churn 200": ("churn", ["--clients", "200", "--duration", "20"]),
        "idle 5000": ("idle", ["--clients", "5000", "--duration", "10"]),
    },
}

# metric rows per scenario: (label, path in the report, better: "low" or "high")
METRICS: dict[str, list[tuple[str, tuple[str, ...], str]]] = {
    "relay": [
        ("relayed msg/s", ("relay", "relayed_per_s"), "high"),
        ("lost (undelivered after --grace)", ("relay", "lost"), "low"),
        ("latency p50 ms", ("relay", "latency_ms", "p50"), "low"),
        ("latency p99 ms", ("relay", "latency_ms", "p99"), "low"),
        ("latency max ms", ("relay", "latency_ms", "max"), "low"),
        ("server CPU µs/msg", ("server", "cpu_us_per_msg"), "low"),
        ("server CPU %", ("server", "cpu_pct"), "low"),
        ("server RSS MiB", ("server", "rss_mib"), "low"),
    ],
    "churn": [
        ("matches/s", ("churn", "matches_per_s"), "high"),
        ("time to match p50 ms", ("churn", "time_to_match_ms", "p50"), "low"),
        ("time to match p99 ms", ("churn", "time_to_match_ms", "p99"), "low"),
        ("server CPU µs/match", ("server", "cpu_us_per_match"), "low"),
        ("server CPU %", ("server", "cpu_pct"), "low"),
    ],
    "idle": [
        ("server KiB/connection", ("idle", "rss_per_connection_kib"), "low"),
        ("server CPU µs/connect", ("idle", "cpu_us_per_connect"), "low"),
        ("connect all, s", ("idle", "connect_s"), "low"),
        ("server RSS MiB", ("server", "rss_mib"), "low"),
    ],
}


def worker_pid(pid: int) -> int:
    """The one worker process under ``pid`` (hypercorn's), from /proc: a child started by
    multiprocessing's spawn, not its resource tracker."""
    workers = [c for c in children(pid)
               if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    if len(workers) != 1:
        raise RuntimeError(f"expected one worker process under {pid}, found {workers}")
    return workers[0]


def run_one(server: str, scenario: str, bench_args: list[str], args: argparse.Namespace,
            log: Path) -> dict[str, Any]:
    port = free_port()
    command = SERVERS[server][1](port)
    with log.open("ab") as out:
        process = subprocess.Popen(pinned(args.server_cpu, command), stdout=out,
                                   stderr=subprocess.STDOUT, cwd=ROOT, env=ENV)
    try:
        wait_listening(port, process)
        time.sleep(0.3)  # let the server finish starting before the baseline sample
        pid = worker_pid(process.pid) if server in WORKER_CHILD else process.pid
        bench = pinned(args.bench_cpu, [
            PYTHON, "-m", "liveloop", "bench", scenario, "--url", f"http://127.0.0.1:{port}",
            "--server-pid", str(pid), "--json", "--no-progress",
            "--workers", str(args.workers), *bench_args])
        result = subprocess.run(bench, capture_output=True, text=True, cwd=ROOT,
                                timeout=args.timeout)
        if result.returncode != 0:
            return {"error": result.stderr.strip()[-2000:] or f"exit {result.returncode}"}
        report: dict[str, Any] = json.loads(result.stdout)
        return report
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    finally:
        stop(process)


def dig(report: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def markdown(results: dict[str, dict[str, dict[str, Any]]], scale: str,
             servers: list[str]) -> str:
    lines = [
        f"# Live Loop benchmarks ({scale} scale)", "",
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; server pinned to CPU 0, generator to CPU 1; "
        f"Python {sys.version.split()[0]}.", "",
        "Ratios are Live Loop / baseline: for \"low\" rows below 1x is better, for "
        "\"high\" rows above 1x is better.", "",
    ]
    for name, by_server in results.items():
        scenario = next(iter(by_server.values())).get("scenario") or name.split()[0]
        lines += [f"## {name}", ""]
        header = ["metric", "better", *(SERVERS[s][0] for s in servers)]
        header += [f"ratio to {SERVERS[s][0]}" for s in servers if s != "liveloop"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label, path, better in METRICS.get(scenario, []):
            values = {s: dig(by_server.get(s, {}), path) for s in servers}
            row = [label, better, *(fmt(values[s]) for s in servers)]
            row += [ratio(values.get("liveloop"), values[s]) for s in servers
                    if s != "liveloop"]
            lines.append("| " + " | ".join(row) + " |")
        notes = []
        for s in servers:
            report = by_server.get(s, {})
            if "error" in report:
                notes.append(f"- {SERVERS[s][0]}: FAILED: {report['error'][:300]}")
            for warning in report.get("warnings", []):
                notes.append(f"- {SERVERS[s][0]}: {warning}")
            gen = report.get("generator")
            if gen:
                notes.append(f"- {SERVERS[s][0]}: generator CPU {gen['cpu_s']} s, busiest "
                             f"worker {100 * gen['busiest']:.0f}%")
        lines += ["", *notes, ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--servers", default="liveloop,psio,triows",
                        help="comma-separated subset of: " + ", ".join(SERVERS))
    parser.add_argument("--only", default="", help="run only scenarios whose name has this")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--bench-cpu", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1,
                        help="bench worker processes (they share --bench-cpu)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.md")
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        args.server_cpu = args.bench_cpu = None
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    if hard < 12_000:
        print(f"warning: open files limit is {hard}; idle 5000 needs more", file=sys.stderr)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".servers.log")
    log.write_bytes(b"")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, (scenario, bench_args) in SCALES[args.scale].items():
        if args.only and args.only not in name:
            continue
        for server in servers:
            print(f"{name:>20} on {SERVERS[server][0]} ...", file=sys.stderr, flush=True)
            report = run_one(server, scenario, bench_args, args, log)
            results.setdefault(name, {})[server] = report
            if "error" in report:
                print(f"    failed: {report['error'][:500]}", file=sys.stderr)
    text = markdown(results, args.scale, servers)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
