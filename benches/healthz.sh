#!/usr/bin/env bash
# GET /healthz, side by side in one run: SandGNAT's workers (Unix socket)
# against gunicorn + Flask (TCP), 4 workers each, 64 connections, with the
# same load generator (oha). Also the RSS of an idle SandGNAT worker.
# usage: benches/healthz.sh [SECONDS=10]
source "$(dirname "$0")/lib.sh"
secs=${1:-10}
need_tools
start_sandgnat 4
trap stop_sandgnat EXIT
idle=$(for p in $(worker_pids); do rss_kib "$p"; done | sort -n | tail -n1)
oha_json -z 2s -c 64 --unix-socket "$run/workers.sock" http://x/healthz >/dev/null   # warm-up
ours=$(oha_json -z "${secs}s" -c 64 --unix-socket "$run/workers.sock" http://x/healthz)
theirs=$(oha_json -z "${secs}s" -c 64 http://127.0.0.1:18080/healthz)
python3 - "$ours" "$theirs" "$idle" <<'PY'
import json, sys
o, t, idle = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
print(json.dumps({"bench": "healthz", "connections": 64, "workers": 4, "sandgnat": o, "gunicorn": t,
  "rps_ratio": round(o["rps"] / t["rps"], 1), "p99_ratio": round(o["p99_ms"] / t["p99_ms"], 3),
  "idle_worker_rss_mib": round(idle / 1024, 1)}))
PY
