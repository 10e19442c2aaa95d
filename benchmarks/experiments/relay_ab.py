#!/usr/bin/env python3
"""Relay at saturation, two source trees alternately (A/B for a change on the hot path).

    git archive main | tar -x -C /tmp/main
    python benchmarks/experiments/relay_ab.py --a /tmp/main --b . --rounds 3 \\
        --deployment "2 workers + Redis" [--sequential]

Each round runs the deployment (``benchmarks/cluster.py``'s) from tree A, then B (the
order swapped every other round), under ``loadgen/relay.mjs``, and prints relayed msg/s,
CPU µs per relayed message (servers + Redis) and the B/A ratios of each round.
``--sequential`` makes the generator request rooms one at a time, so with two workers
nearly every pair spans both (every relay crosses through Redis).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster import DEPLOYMENTS, Deployment, run_one
from servers import HERE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", type=Path, required=True)
    parser.add_argument("--b", type=Path, required=True)
    parser.add_argument("--deployment", default="1 worker")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", default="8")
    parser.add_argument("--window", default="64")
    parser.add_argument("--sequential", action="store_true")
    args = parser.parse_args()
    base = next(d for d in DEPLOYMENTS if d.name == args.deployment)
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    load = ["--clients", "100", "--window", args.window, "--warmup", "2",
            "--duration", args.seconds, *(["--sequential", "1"] if args.sequential else [])]
    log = HERE / "results" / "relay_ab.servers.log"
    log.parent.mkdir(exist_ok=True)
    print(f"{args.deployment}; A = {trees['A']}, B = {trees['B']}")
    print("round tree   msg/s  µs/msg  across (clients, msgs)  generator µs/msg")
    for number in range(args.rounds):
        figures: dict[str, tuple[float, float]] = {}
        for tree in ("AB" if number % 2 == 0 else "BA"):
            deployment = Deployment(base.name, nodes=base.nodes, workers=base.workers,
                                    redis=base.redis, root=trees[tree])
            report = run_one(deployment, "saturation", load, log, 240)
            if "error" in report:
                print(f"{number + 1} {tree} error: {report['error'][-500:]}")
                continue
            rate = report["relay"]["relayed_per_s"]
            cpu = report["server"]["cpu_us_per_msg"]
            figures[tree] = (rate, cpu)
            relay = report["relay"]
            share = relay.get("received_by_clients_paired_across", 0) / max(1, relay["received"])
            print(f"{number + 1:5} {tree:4} {rate:7.0f} {cpu:7.1f} "
                  f"{relay.get('clients_paired_across', 0):4} {share:4.0%} "
                  f"{report['generator']['cpu_us_per_msg']:8.1f}", flush=True)
        if len(figures) == 2:
            (rate_a, cpu_a), (rate_b, cpu_b) = figures["A"], figures["B"]
            print(f"{number + 1:5} B/A  {rate_b / rate_a:7.2f} {cpu_b / cpu_a:7.2f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
