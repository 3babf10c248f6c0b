#!/usr/bin/env bash
# Issue 2: GET /healthz, side by side in one run, 4 workers each, 64
# connections. SandGNAT's workers are hit on their Unix socket (plain
# HTTP/1.1, keep-alive; no front end) with oha; gunicorn + Flask (4 sync
# workers, one request per connection, as the seed deploys it) on its TCP
# port with the same oha settings and also with wrk (../shared/bench/
# load.sh), which gets more out of gunicorn. Alternating rounds, so both
# see the same machine. Two ratios per round: same tool (oha vs oha) and
# conservative (ours against gunicorn's better figure of the two tools).
# Also each SandGNAT worker's memory after boot with no traffic and after
# the load: VmRSS, and its parts (RssAnon: private; RssFile: pages of the
# binary and libraries, shared by every worker), and from smaps_rollup the
# worker's own share: PSS (shared pages divided among the processes that
# map them) and USS (pages no other process maps).
# usage: benches/healthz.sh [SECONDS=10] [ROUNDS=3]
source "$(dirname "$0")/lib.sh"
secs=${1:-10}; rounds=${2:-3}; conns=64
need_tools
start_sandgnat 4
trap stop_sandgnat EXIT
sleep 2   # let boot-time allocations settle before reading memory
pids=$(worker_pids)
mem() {   # one JSON list: per worker {pid, rss, anon, file, pss, uss} in MiB
  local out="" p
  for p in $pids; do
    out+="${out:+,}$(awk -v p="$p" '/^VmRSS/{r=$2} /^RssAnon/{a=$2} /^RssFile/{f=$2}
      /^Pss:/{s=$2} /^Private_(Clean|Dirty):/{u+=$2}
      END {printf "{\"pid\":%d,\"rss_mib\":%.1f,\"anon_mib\":%.1f,\"file_mib\":%.1f,\"pss_mib\":%.1f,\"uss_mib\":%.1f}", p, r/1024, a/1024, f/1024, s/1024, u/1024}' \
      "/proc/$p/status" "/proc/$p/smaps_rollup")"
  done
  echo "[$out]"
}
idle=$(mem)
oha_json -z 2s -c "$conns" --unix-socket "$run/workers.sock" http://x/healthz >/dev/null   # warm-up
oha_json -z 2s -c "$conns" http://127.0.0.1:18080/healthz >/dev/null
results=()
for _ in $(seq "$rounds"); do
  ours=$(oha_json -z "${secs}s" -c "$conns" --unix-socket "$run/workers.sock" http://x/healthz)
  theirs=$(oha_json -z "${secs}s" -c "$conns" http://127.0.0.1:18080/healthz)
  theirs_wrk=$(bash "$shared/bench/load.sh" http://127.0.0.1:18080/healthz "" "" "$conns" "$secs")
  results+=("{\"sandgnat_oha\":$ours,\"gunicorn_oha\":$theirs,\"gunicorn_wrk\":$theirs_wrk}")
done
sleep 1
after=$(mem)
python3 - "$idle" "$after" "$conns" "${results[@]}" <<'PY'
import json, statistics, sys
idle, after, conns = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
rounds = [json.loads(a) for a in sys.argv[4:]]
for i, r in enumerate(rounds, 1):
    o, t, w = r["sandgnat_oha"], r["gunicorn_oha"], r["gunicorn_wrk"]
    best = max((t, w), key=lambda x: x["rps"])
    r.update(bench="healthz", round=i,
             rps_ratio_same_tool=round(o["rps"] / t["rps"], 2),
             p99_ratio_same_tool=round(o["p99_ms"] / t["p99_ms"], 3),
             rps_ratio_vs_best=round(o["rps"] / best["rps"], 2),
             p99_ratio_vs_best=round(o["p99_ms"] / min(t["p99_ms"], w["p99_ms"]), 3))
    print(json.dumps(r))
med = lambda k: statistics.median(r[k] for r in rounds)
print(json.dumps({"bench": "healthz_summary", "connections": conns, "workers": 4,
  "sandgnat": "workers' Unix socket, oha", "gunicorn": "127.0.0.1:18080, oha and wrk",
  **{f"median_{k}": med(k) for k in ("rps_ratio_same_tool", "p99_ratio_same_tool", "rps_ratio_vs_best", "p99_ratio_vs_best")},
  "max_idle_worker_rss_mib": max(m["rss_mib"] for m in idle),
  "max_idle_worker_anon_mib": max(m["anon_mib"] for m in idle),
  "max_idle_worker_pss_mib": max(m["pss_mib"] for m in idle),
  "max_idle_worker_uss_mib": max(m["uss_mib"] for m in idle),
  "worker_memory_idle": idle, "worker_memory_after_load": after}))
PY
