#!/usr/bin/env bash
# Where a 4 KiB submission's CPU goes: 16 clients for SECONDS, then CPU
# per submission read from /proc for the workers, the Postgres server's
# processes and the whole machine (load generator and kernel included),
# and how the clients' connections spread over the 4 workers (the CPU
# each worker used: the kernel hands a burst of connections on the shared
# socket to whichever worker accepts first, often all to one).
# usage: benches/submit-cpu.sh [SECONDS=10] [RUNS=3]
source "$(dirname "$0")/lib.sh"
secs=${1:-10}; runs=${2:-3}
need_tools
samples=$BENCH_DIR/samples
head -c 4096 "$samples/1m.bin" > "$samples/4k-bench.bin"
ticks() { local t=0 p; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
machine() { awk '/^cpu /{print $2+$3+$4+$6+$7+$8}' /proc/stat; }
load() {
  oha_json -z "$1" -c 16 -m POST -D "$samples/4k-bench.bin" -T application/octet-stream \
    -H "X-API-Key: $key" --unix-socket "$run/workers.sock" http://x/v1/submit
}
for _ in $(seq "$runs"); do
  start_sandgnat 4 $'[queue]\nrunners = 0'
  trap stop_sandgnat EXIT
  load 2s >/dev/null   # warm-up: pools connect, caches fill
  wp=$(worker_pids); pg=$(pgrep -u postgres | tr '\n' ' ')
  per=(); for p in $wp; do per+=("$(ticks "$p")"); done
  w0=$(ticks $wp); p0=$(ticks $pg); m0=$(machine)
  r=$(load "${secs}s")
  w1=$(ticks $wp); p1=$(ticks $pg); m1=$(machine)
  spread=""; i=0; for p in $wp; do spread+="${spread:+,}$(( $(ticks "$p") - per[i] ))"; i=$((i + 1)); done
  stop_sandgnat
  python3 - "$r" "$((w1 - w0))" "$((p1 - p0))" "$((m1 - m0))" "$spread" "$(getconf CLK_TCK)" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); w, p, m = (int(x) for x in sys.argv[2:5]); hz = int(sys.argv[6])
us = lambda t: round(t / hz * 1e6 / max(r["ok"], 1), 1)
print(json.dumps({"bench": "submit_cpu", "rps": r["rps"], "p99_ms": r["p99_ms"], "ok": r["ok"],
  "us_per_submission": {"workers": us(w), "postgres": us(p), "machine": us(m)},
  "worker_cpu_ticks": [int(x) for x in sys.argv[5].split(",")]}))
PY
done
