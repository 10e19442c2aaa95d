#!/bin/bash
# A/B: churn and relay, in-process (no Redis), main against this branch, interleaved.
PY=${PY:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/python}
MAIN=${MAIN:-/tmp/ll-main}   # a copy of main: git archive main | tar -x -C /tmp/ll-main
HERE=$(cd "$(dirname "$0")/../.." && pwd)
for round in 1 2; do
  for side in main branch; do
    if [ $side = main ]; then dir=$MAIN; else dir=$HERE; fi
    port=$((8200 + round * 10 + ${#side}))
    (cd $dir && exec $PY -m liveloop serve --bind 127.0.0.1:$port --rate-limits off > /tmp/ab-$side.log 2>&1) &
    spid=$!
    sleep 2
    pid=$(pgrep -P $spid -f "liveloop serve" || echo $spid)
    for scen in churn relay; do
      if [ $scen = churn ]; then extra="--clients 100 --duration 8"; else extra="--clients 100 --rate 20 --duration 8"; fi
      out=$(cd $HERE && $PY -m liveloop bench $scen --url http://127.0.0.1:$port --server-pid $spid --workers 1 --no-progress --json $extra)
      echo "$round $side $scen $(echo "$out" | $PY -c 'import json,sys; r=json.load(sys.stdin); s=r["server"]; print({k: s.get(k) for k in ("cpu_us_per_match","cpu_us_per_msg")}, r.get("churn",{}).get("matches_per_s"), r.get("relay",{}).get("relayed_per_s"))')"
    done
    kill $spid; wait $spid 2>/dev/null
  done
done
