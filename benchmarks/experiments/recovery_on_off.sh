#!/usr/bin/env bash
# Connection state recovery on against off, and delivered relays under steady cuts beside
# Node's socket.io (recovery on) and python-socketio. Figures for docs/performance.md.
#
#   npm ci --prefix benchmarks/baselines/node   # Node's socket.io, for the bench only
#   bash benchmarks/experiments/recovery_on_off.sh
#
# The server runs on CPU 0, the generator on CPU 1 (as benchmarks/run.py does). Each
# on/off pair runs back to back, twice, so that the ratio is taken minutes apart at most.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
LL=.venv/bin/liveloop
PORT=18940

serve() {  # serve RECOVERY_WINDOW: start Live Loop, wait until it listens; prints its pid
  taskset -c 0 env LIVELOOP_RECOVERY_WINDOW="$1" $LL serve --bind 127.0.0.1:$PORT \
    --rate-limits off >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 50); do
    curl -sf http://127.0.0.1:$PORT/ >/dev/null && break
    sleep 0.2
  done
  echo $pid
}

bench() {  # bench PID ARGS...: liveloop bench on CPU 1 against the server on $PORT
  local pid=$1; shift
  taskset -c 1 $LL bench "$@" --url http://127.0.0.1:$PORT --server-pid "$pid" --json
}

for round in 1 2; do
  for window in 20 0; do
    pid=$(serve $window)
    echo "== round $round, recovery window $window: idle 5000"
    bench "$pid" idle --clients 5000 --duration 5 \
      | $PY -c 'import json,sys; r=json.load(sys.stdin); print(r["idle"])'
    kill "$pid"; wait "$pid" 2>/dev/null || true
    pid=$(serve $window)
    echo "== round $round, recovery window $window: relay 100 x 20/s"
    bench "$pid" relay --clients 100 --rate 20 --duration 20 \
      | $PY -c 'import json,sys; r=json.load(sys.stdin); print("cpu_us_per_msg", r["server"]["cpu_us_per_msg"], "sent", r["relay"]["sent"], "lost", r["relay"]["lost"], r["warnings"])'
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done

cuts() {  # cuts NAME: the cuts scenario against what listens on $PORT
  echo "== cuts: $1"
  taskset -c 1 $LL bench cuts --url http://127.0.0.1:$PORT --clients 20 --rate 10 \
    --duration 30 --cut-every 3 --grace 5
}
pid=$(serve 20); cuts "Live Loop, recovery on"; kill "$pid"; wait "$pid" 2>/dev/null || true
taskset -c 0 node benchmarks/baselines/node/server.mjs --port $PORT --recovery 2>/dev/null &
pid=$!; sleep 1; cuts "Node socket.io 4.8, connectionStateRecovery on"; kill $pid
taskset -c 0 $PY benchmarks/baselines/psio_server.py --port $PORT &
pid=$!; sleep 3; cuts "python-socketio"; kill $pid
