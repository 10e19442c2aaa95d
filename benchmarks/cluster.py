#!/usr/bin/env python3
"""Live Loop past one process: relay and churn with and without Redis, against Node.

    python benchmarks/cluster.py            # about five minutes
    python benchmarks/cluster.py --quick    # shorter loads, for a smoke run

Deployments, each started fresh for each load and stopped after it:

- ``1 process``: ``liveloop serve`` alone (shared state in memory, the default);
- ``1 process + Redis``: one ``liveloop serve`` with ``LIVELOOP_REDIS_URL``, and Redis;
- ``2 processes + Redis``: two ``liveloop serve`` on two ports sharing one Redis; the
  generator's clients take the two in turn, so about half the pairs span the two;
- ``Node socket.io``: ``baselines/node/server.js``, one Node process (``npm ci`` in
  ``baselines/node`` first).

Loads (``liveloop bench``): ``relay`` at saturation (every pair sends as fast as the
rate allows; the offered load is far above what any deployment moves, so relayed msg/s
is the throughput), ``relay`` at a fixed moderate load (CPU per message without
queueing), and ``churn`` (CPU per match). CPU is summed over every server process *and*
Redis. Nothing is pinned: two server processes need both cores, so the generator shares
them with the servers in every deployment alike, and its own CPU is reported beside.
Writes ``results/cluster.md`` and ``results/cluster.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, deadline: float = 30) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Deployment:
    """Processes started for one load; ``urls`` and ``pids`` once started."""

    def __init__(self, name: str, nodes: int, redis: bool, node_js: bool = False) -> None:
        self.name = name
        self.nodes = nodes
        self.redis = redis
        self.node_js = node_js
        self.processes: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []

    def start(self, log: Path) -> None:
        out = log.open("ab")
        env = dict(os.environ)
        # Every generated client comes from 127.0.0.1: the per-address limits (20
        # handshakes per 10 s by default) would refuse all but the first few.
        env.setdefault("LIVELOOP_HANDSHAKES_PER_IP", "1000000")
        env.setdefault("LIVELOOP_MAX_CONNECTIONS_PER_IP", "1000000")
        if self.redis:
            port = free_port()
            binary = shutil.which("redis-server") or shutil.which("valkey-server")
            if binary is None:
                raise RuntimeError("no redis-server")
            self.processes.append(subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no"], stdout=out, stderr=subprocess.STDOUT))
            wait_listening(port)
            env["LIVELOOP_REDIS_URL"] = f"redis://127.0.0.1:{port}"
        for _ in range(self.nodes):
            port = free_port()
            if self.node_js:
                command = ["node", str(HERE / "baselines" / "node" / "server.js"),
                           "--port", str(port)]
            else:
                command = [PYTHON, "-m", "liveloop", "serve", "--bind", f"127.0.0.1:{port}",
                           "--rate-limits", "off"]
            self.processes.append(subprocess.Popen(command, stdout=out,
                                                   stderr=subprocess.STDOUT, cwd=ROOT,
                                                   env=env))
            wait_listening(port)
            self.urls.append(f"http://127.0.0.1:{port}")
        time.sleep(0.5)  # let every process settle before the baseline sample

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        self.urls.clear()


DEPLOYMENTS = [
    Deployment("1 process", 1, redis=False),
    Deployment("1 process + Redis", 1, redis=True),
    Deployment("2 processes + Redis", 2, redis=True),
    Deployment("Node socket.io", 1, redis=False, node_js=True),
]


def loads(quick: bool) -> dict[str, tuple[str, list[str]]]:
    seconds = "4" if quick else "10"
    return {
        "relay, saturation (100 clients x 100/s offered)": (
            "relay", ["--clients", "100", "--rate", "100", "--duration", seconds,
                      "--grace", "3"]),
        "relay, 100 clients x 10/s": (
            "relay", ["--clients", "100", "--rate", "10", "--duration", seconds]),
        "churn, 100 clients": ("churn", ["--clients", "100", "--duration", seconds]),
    }


METRICS = {
    "relay": [("relayed msg/s", ("relay", "relayed_per_s")),
              ("lost", ("relay", "lost")),
              ("latency p50 ms", ("relay", "latency_ms", "p50")),
              ("latency p99 ms", ("relay", "latency_ms", "p99")),
              ("CPU µs/msg (servers + Redis)", ("server", "cpu_us_per_msg")),
              ("CPU % (servers + Redis)", ("server", "cpu_pct")),
              ("generator CPU s", ("generator", "cpu_s"))],
    "churn": [("matches/s", ("churn", "matches_per_s")),
              ("time to match p50 ms", ("churn", "time_to_match_ms", "p50")),
              ("time to match p99 ms", ("churn", "time_to_match_ms", "p99")),
              ("CPU µs/match (servers + Redis)", ("server", "cpu_us_per_match")),
              ("CPU % (servers + Redis)", ("server", "cpu_pct"))],
}


def run_one(deployment: Deployment, scenario: str, args: list[str], log: Path,
            timeout: float) -> dict[str, Any]:
    try:
        deployment.start(log)
        pids = [str(p.pid) for p in deployment.processes]
        also = [flag for pid in pids[1:] for flag in ("--also-pid", pid)]
        command = [PYTHON, "-m", "liveloop", "bench", scenario, "--url",
                   ",".join(deployment.urls), "--server-pid", pids[0], *also, "--json",
                   "--no-progress", "--workers", "2", *args]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                                timeout=timeout)
        if result.returncode != 0:
            return {"error": result.stderr.strip()[-1500:] or f"exit {result.returncode}"}
        report: dict[str, Any] = json.loads(result.stdout)
        return report
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    finally:
        deployment.stop()


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
    return f"{value:,.0f}" if value == 0 or abs(value) >= 100 else f"{value:.3g}"


def markdown(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    names = [d.name for d in DEPLOYMENTS]
    lines = [f"# Live Loop past one process ({time.strftime('%Y-%m-%d %H:%M %Z')})", "",
             f"{os.cpu_count()} CPUs, nothing pinned; Python {sys.version.split()[0]}.", ""]
    for load, by_deployment in results.items():
        scenario = load.split(",")[0]
        lines += [f"## {load}", "", "| metric | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for label, path in METRICS[scenario]:
            lines.append(f"| {label} | " + " | ".join(
                fmt(dig(by_deployment.get(n, {}), path)) for n in names) + " |")
        errors = [f"- {n}: {r['error'][-300:]}" for n, r in by_deployment.items()
                  if "error" in r]
        lines += ["", *errors, ""] if errors else [""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter loads")
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    log = out / "cluster.servers.log"
    log.write_bytes(b"")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for load, (scenario, bench_args) in loads(args.quick).items():
        results[load] = {}
        for deployment in DEPLOYMENTS:
            print(f"{load} / {deployment.name} ...", file=sys.stderr, flush=True)
            results[load][deployment.name] = run_one(deployment, scenario, bench_args, log,
                                                     args.timeout)
    (out / "cluster.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (out / "cluster.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
