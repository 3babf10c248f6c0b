#!/usr/bin/env bash
# How connections spread over the workers: 64 oha connections to
# /healthz on the workers' socket, and mid-run, the connections each
# worker holds (sandgnat_worker_active_connections), with the run's req/s
# and p99. Several short trials, each with its own burst of connects.
# usage: benches/spread.sh [TRIALS=5] [CONNECTIONS=64]
source "$(dirname "$0")/lib.sh"
trials=${1:-5}; conns=${2:-64}
need_tools
start_sandgnat 4 >/dev/null
trap stop_sandgnat EXIT
out=$(mktemp)
for t in $(seq "$trials"); do
  oha_json -z 3s -c "$conns" --unix-socket "$run/workers.sock" http://x/healthz > "$out" & load=$!
  # Mid-run: every connection is open and busy by then.
  sleep 1.5
  per=$(curl -s "http://127.0.0.1:$metrics_port/metrics" |
    awk '/^sandgnat_worker_active_connections/ {print $2}' | sort -n | paste -sd, -)
  wait "$load"
  python3 - "$t" "$per" "$(cat "$out")" <<'PY'
import json, sys
r = json.loads(sys.argv[3])
print(json.dumps({"bench": "spread", "trial": int(sys.argv[1]),
  "connections_per_worker": [int(float(x)) for x in sys.argv[2].split(",") if x],
  "rps": r["rps"], "p99_ms": r["p99_ms"]}))
PY
done
