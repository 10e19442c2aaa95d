#!/usr/bin/env bash
# CPU per relayed message with metrics on (LIVELOOP_METRICS_BIND set) against off, same
# build, alternating runs (the order swapped every pair); the server pinned to CPU 0, the
# generator to CPU 1. Prints: pair, mode, server CPU µs per relayed message, received,
# lost, warnings, and (on) the server's own relay count.
#   PAIRS=6 CLIENTS=100 RATE=2 DUR=12 benchmarks/experiments/metrics_on_off.sh
cd "$(dirname "$0")/../.."
PAIRS=${PAIRS:-3}; RATE=${RATE:-10}; CLIENTS=${CLIENTS:-200}; DUR=${DUR:-10}
out=$(mktemp -d)
for i in $(seq 1 "$PAIRS"); do
  if [ $((i % 2)) = 1 ]; then order="off on"; else order="on off"; fi
  for mode in $order; do
    port=$((20000 + RANDOM % 10000))
    if [ "$mode" = on ]; then export LIVELOOP_METRICS_BIND=127.0.0.1:$((port + 1)); else unset LIVELOOP_METRICS_BIND; fi
    taskset -c 0 .venv/bin/liveloop serve --bind "127.0.0.1:$port" --rate-limits off 2>"$out/server.err" &
    pid=$!
    for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$port/" && break; sleep 0.1; done
    taskset -c 1 .venv/bin/liveloop bench relay --url "http://127.0.0.1:$port" --clients "$CLIENTS" \
      --rate "$RATE" --duration "$DUR" --workers 1 --server-pid "$pid" --json --no-progress \
      > "$out/report.json" 2>"$out/bench.err"
    counted=-
    if [ "$mode" = on ]; then
      counted=$(curl -s "127.0.0.1:$((port + 1))/metrics" | grep '^liveloop_relayed_total{event="send-new' | cut -d' ' -f2)
    fi
    kill "$pid"; wait "$pid" 2>/dev/null
    python3 -c "import json; r = json.load(open('$out/report.json')); print('$i $mode', r['server']['cpu_us_per_msg'], r['relay']['received'], r['relay']['lost'], r['warnings'], '$counted')"
  done
done
rm -r "$out"
