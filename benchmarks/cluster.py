#!/usr/bin/env python3
"""Live Loop past one process: relay at saturation, relay and churn, with and without
Redis and workers, against Node's socket.io, in one run.

    python benchmarks/cluster.py                  # every load, every deployment
    python benchmarks/cluster.py --quick          # shorter loads, for a smoke run
    python benchmarks/cluster.py --loads saturation --repeat 3

Needs ``npm ci --prefix benchmarks/baselines/node`` (the Node baseline) and
``npm ci --prefix benchmarks/loadgen`` (the saturation generator).

Deployments, each started fresh for each load and stopped after it:

- ``Node socket.io``: ``baselines/node/server.mjs``, one Node process (recovery off);
- ``1 worker``: ``liveloop serve`` alone (shared state in memory, the default);
- ``1 worker + Redis``: one ``liveloop serve`` with ``LIVELOOP_REDIS_URL``, and Redis;
- ``2 workers + Redis``: ``liveloop serve --workers 2`` and Redis; the kernel spreads
  connections over the workers, so about half the pairs span the two and their relays
  cross through Redis;
- ``2 processes + Redis`` (only when named in ``--deployments``): two ``liveloop
  serve`` on two ports, the generator's clients taking them in turn.

Loads:

- ``saturation``: ``loadgen/relay.mjs`` (the official ``socket.io-client`` in one Node
  process, the same for every deployment): 100 clients in 50 pairs, each keeping
  ``--window`` ICE candidates in flight to its partner and sending the next as one
  arrives (closed loop), so the offered load follows what the server delivers and
  relayed msg/s is the throughput at saturation;
- ``saturation in turn``: the same, but the clients request their rooms one at
  a time, so consecutive arrivals are paired: with two workers (whose handshakes take
  turns) most pairs then span both, the worst case for relays;
- ``relay``: ``liveloop bench relay`` at 100 clients x 10/s (CPU per message without
  queueing);
- ``churn``: ``liveloop bench churn``, 100 clients (CPU per match).

Fairness: nothing is pinned (two workers need both cores), so the generator and Redis
share the two cores with the servers in every deployment alike; the report gives the
CPU seconds of each (servers, Redis, generator) over the measured window, the
throughput per core the servers and Redis used, and every figure as a ratio to Node's
in the same round (or to the first deployment named, without Node). It also gives the
seconds each role spent runnable but waiting for a CPU (``/proc`` schedstat): when CPU
seconds plus waiting fill the window, the role was bounded by its share of the cores,
not by anything it waited for; and the messages per second per client whose partner is
on the same worker and on the other. ``--repeat`` runs the deployments again in reverse
order, to show the spread. Writes ``results/cluster.md`` and ``results/cluster.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from servers import (
    HERE,
    PYTHON,
    ROOT,
    children,
    free_port,
    liveloop_command,
    node_command,
    redis_command,
    stop,
    wait_listening,
)

LOADGEN = HERE / "loadgen" / "relay.mjs"


class Deployment:
    """Processes started for one load: ``urls`` and ``pids`` (label -> pid) once started."""

    def __init__(self, name: str, *, nodes: int = 1, workers: int = 1, redis: bool = False,
                 node_js: bool = False, root: Path = ROOT) -> None:
        self.name = name
        self.root = root
        """The source tree Live Loop is run from (``python -m liveloop`` in it)."""
        self.nodes = nodes
        self.workers = workers
        self.redis = redis
        self.node_js = node_js
        self.processes: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        self.pids: dict[str, int] = {}

    def start(self, log: Path) -> None:
        out = log.open("ab")
        env = dict(os.environ)
        # Every generated client comes from 127.0.0.1: the per-address limits (20
        # handshakes per 10 s by default) would refuse all but the first few.
        env.setdefault("LIVELOOP_HANDSHAKES_PER_IP", "1000000")
        env.setdefault("LIVELOOP_MAX_CONNECTIONS_PER_IP", "1000000")
        if self.redis:
            port = free_port()
            process = subprocess.Popen(redis_command(port), stdout=out,
                                       stderr=subprocess.STDOUT)
            self.processes.append(process)
            wait_listening(port, process)
            env["LIVELOOP_REDIS_URL"] = f"redis://127.0.0.1:{port}"
            self.pids["redis"] = process.pid
        for node in range(self.nodes):
            port = free_port()
            if self.node_js:
                command = node_command(port)
            else:
                command = liveloop_command(port, "--workers", str(self.workers))
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                       cwd=self.root, env=env)
            self.processes.append(process)
            wait_listening(port, process)
            self.urls.append(f"http://127.0.0.1:{port}")
            self.pids[f"server {node}" if self.nodes > 1 else "server"] = process.pid
        time.sleep(1.0)  # let every process (and worker) settle before the first sample
        for label, pid in list(self.pids.items()):
            for n, child in enumerate(children(pid)):
                if label != "redis":
                    self.pids[f"{label} worker {n}"] = child

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)
        self.processes.clear()
        self.urls.clear()
        self.pids.clear()


DEPLOYMENTS = [
    Deployment("Node socket.io", node_js=True),
    Deployment("1 worker"),
    Deployment("1 worker + Redis", redis=True),
    Deployment("2 workers + Redis", workers=2, redis=True),
    Deployment("2 processes + Redis", nodes=2, redis=True),
]
DEFAULT_DEPLOYMENTS = DEPLOYMENTS[:4]
BASE = "Node socket.io"


def loads(quick: bool, window: int) -> dict[str, tuple[str, list[str]]]:
    """name -> (scenario, generator arguments)."""
    seconds = "4" if quick else "10"
    return {
        "saturation": ("saturation", ["--clients", "100", "--window", str(window),
                                      "--warmup", "2", "--duration", seconds]),
        "saturation in turn": ("saturation", [
            "--clients", "100", "--window", str(window), "--warmup", "2", "--duration",
            seconds, "--sequential", "1"]),
        "relay": ("relay", ["--clients", "100", "--rate", "10", "--duration", seconds]),
        "churn": ("churn", ["--clients", "100", "--duration", seconds]),
    }


def run_one(deployment: Deployment, scenario: str, args: list[str], log: Path,
            timeout: float) -> dict[str, Any]:
    """Start ``deployment``, run one load against it, stop it: the load's report (with
    ``pids``: label -> pid), or ``{"error": ...}``."""
    try:
        deployment.start(log)
        pids = list(deployment.pids.values())
        if scenario == "saturation":
            command = ["node", str(LOADGEN), "--url", ",".join(deployment.urls), *args,
                       *(flag for pid in pids for flag in ("--pid", str(pid)))]
        else:
            also = [flag for pid in pids[1:] for flag in ("--also-pid", str(pid))]
            command = [PYTHON, "-m", "liveloop", "bench", scenario, "--url",
                       ",".join(deployment.urls), "--server-pid", str(pids[0]), *also,
                       "--json", "--no-progress", "--workers", "2", *args]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                                timeout=timeout)
        if result.returncode != 0:
            return {"error": result.stderr.strip()[-1500:] or f"exit {result.returncode}"}
        report: dict[str, Any] = json.loads(result.stdout)
        report["pids"] = dict(deployment.pids)
        return report
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    finally:
        deployment.stop()


def dig(report: dict[str, Any], *path: str) -> float | None:
    value: Any = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def cpu_by_role(report: dict[str, Any]) -> dict[str, float]:
    """Saturation: CPU seconds of the servers (every server process and worker), Redis,
    and the generator, over the measured window."""
    labels = {pid: label for label, pid in report.get("pids", {}).items()}
    roles = {"servers": 0.0, "redis": 0.0}
    for process in report.get("server", {}).get("processes", []):
        roles["redis" if labels.get(process["pid"]) == "redis" else "servers"] += \
            process["cpu_s"]
    roles["generator"] = float(report.get("generator", {}).get("cpu_s", 0.0))
    return roles


def waiting_for_cpu(report: dict[str, Any]) -> tuple[float | None, float | None]:
    """Saturation: seconds the server processes (all together) and the generator spent
    runnable but waiting for a CPU over the measured window (None without schedstat)."""
    labels = {pid: label for label, pid in report.get("pids", {}).items()}
    waits = [p.get("cpu_wait_s") for p in report.get("server", {}).get("processes", [])
             if labels.get(p["pid"]) != "redis"]
    servers = sum(w for w in waits if w is not None) if waits and None not in waits else None
    return servers, dig(report, "generator", "cpu_wait_s")


def saturation_rows(report: dict[str, Any]) -> dict[str, float | None]:
    roles = cpu_by_role(report)
    seconds = dig(report, "duration_s") or 1.0
    rate = dig(report, "relay", "relayed_per_s")
    used = (roles["servers"] + roles["redis"]) / seconds
    # A sid's first character names its worker only under --workers: elsewhere every
    # pair is within one process.
    workers = any("worker" in label for label in report.get("pids", {}))
    clients = dig(report, "clients")
    return {
        "relayed msg/s": rate,
        "clients paired across workers": dig(report, "relay", "clients_paired_across")
        if workers else None,
        "lost": dig(report, "relay", "lost"),
        "latency p50 ms": dig(report, "relay", "latency_ms", "p50"),
        "latency p99 ms": dig(report, "relay", "latency_ms", "p99"),
        "CPU s servers": roles["servers"],
        "CPU s Redis": roles["redis"],
        "CPU s generator": roles["generator"],
        # Runnable, not running: CPU s + this near (processes x seconds) means the
        # process was bounded by the CPU it got, not by waiting for its peers.
        "s waiting for a CPU, servers": waiting_for_cpu(report)[0],
        "s waiting for a CPU, generator": waiting_for_cpu(report)[1],
        "msg/s per client, partner on the same worker": dig(
            report, "relay", "per_client_msg_s_within") if workers
        else rate / clients if rate and clients else None,
        "msg/s per client, partner on the other worker": dig(
            report, "relay", "per_client_msg_s_across") if workers else None,
        "cores used, servers + Redis": used,
        "msg/s per core used, servers + Redis": rate / used if rate and used else None,
        "CPU µs/msg, servers + Redis": dig(report, "server", "cpu_us_per_msg"),
        "CPU µs/msg, generator": dig(report, "generator", "cpu_us_per_msg"),
    }


METRICS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "relay": [("relayed msg/s", ("relay", "relayed_per_s")),
              ("lost", ("relay", "lost")),
              ("CPU µs/msg, servers + Redis", ("server", "cpu_us_per_msg")),
              ("CPU %, servers + Redis", ("server", "cpu_pct")),
              ("generator CPU s", ("generator", "cpu_s"))],
    "churn": [("matches/s", ("churn", "matches_per_s")),
              ("time to match p50 ms", ("churn", "time_to_match_ms", "p50")),
              ("time to match p99 ms", ("churn", "time_to_match_ms", "p99")),
              ("CPU µs/match, servers + Redis", ("server", "cpu_us_per_match")),
              ("CPU %, servers + Redis", ("server", "cpu_pct"))],
}
RATIO_ROWS = {"relayed msg/s", "msg/s per core used, servers + Redis",
              "CPU µs/msg, servers + Redis", "CPU µs/match, servers + Redis"}


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value == 0 or abs(value) >= 100 else f"{value:.3g}"


def table(load: str, by_deployment: dict[str, dict[str, Any]]) -> list[str]:
    names = list(by_deployment)
    base_name = BASE if BASE in names else names[0]  # Node's, or the first run's
    rows: dict[str, dict[str, float | None]] = {}
    for name, report in by_deployment.items():
        if load.startswith("saturation"):
            values = saturation_rows(report)
        else:
            values = {label: dig(report, *path) for label, path in METRICS[load]}
        for label, value in values.items():
            rows.setdefault(label, {})[name] = value
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, values in rows.items():
        lines.append(f"| {label} | " + " | ".join(fmt(values.get(n)) for n in names) + " |")
        base = values.get(base_name)
        if label in RATIO_ROWS and base:
            lines.append(f"| {label}, ratio to {base_name} | " + " | ".join(
                f"{v / base:.2f}x" if v else "-" for v in (values.get(n) for n in names))
                + " |")
    errors = [f"- {n}: {r['error'][-300:]}" for n, r in by_deployment.items() if "error" in r]
    warnings = [f"- {n}: {w}" for n, r in by_deployment.items()
                for w in r.get("warnings", [])]
    return [*lines, "", *errors, *warnings]


def markdown(rounds: list[dict[str, dict[str, dict[str, Any]]]]) -> str:
    lines = [f"# Live Loop past one process ({time.strftime('%Y-%m-%d %H:%M %Z')})", "",
             f"{os.cpu_count()} CPUs, nothing pinned; load average before: "
             f"{os.getloadavg()[0]:.1f}; Python {sys.version.split()[0]}.", ""]
    for number, results in enumerate(rounds, 1):
        for load, by_deployment in results.items():
            lines += [f"## Round {number}: {load}", "", *table(load, by_deployment), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter loads")
    parser.add_argument("--loads", default=",".join(loads(False, 0)),
                        help="comma-separated: " + ", ".join(loads(False, 0)))
    parser.add_argument("--deployments", default=",".join(d.name for d in DEFAULT_DEPLOYMENTS),
                        help="comma-separated deployment names")
    parser.add_argument("--window", type=int, default=64,
                        help="saturation: messages in flight per client (default 64)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds; every other one in reverse order")
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args()
    chosen = [d for name in args.deployments.split(",") for d in DEPLOYMENTS
              if d.name == name.strip()]
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    log = out / "cluster.servers.log"
    log.write_bytes(b"")
    every = loads(args.quick, args.window)
    rounds: list[dict[str, dict[str, dict[str, Any]]]] = []
    for number in range(args.repeat):
        order = chosen if number % 2 == 0 else chosen[::-1]
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for load in (name.strip() for name in args.loads.split(",")):
            scenario, bench_args = every[load]
            results[load] = {}
            for deployment in order:
                print(f"round {number + 1}: {load} / {deployment.name} ...", file=sys.stderr,
                      flush=True)
                results[load][deployment.name] = run_one(deployment, scenario, bench_args,
                                                         log, args.timeout)
            results[load] = {d.name: results[load][d.name] for d in chosen}
        rounds.append(results)
    (out / "cluster.json").write_text(json.dumps(rounds, indent=2))
    text = markdown(rounds)
    (out / "cluster.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
