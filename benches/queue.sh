#!/usr/bin/env bash
# Job-queue throughput (issue 6), on this machine with Postgres on the same
# cores: enqueue and claim+complete in process (benches/queue.rs), claim +
# complete over HTTP through a running appliance (4 workers, a bridge key,
# keep-alive), and what enqueueing costs the submit path: 4 KiB submissions
# at 16 connections with the queue on and off (debug.no_enqueue), in
# alternating rounds so both see the same machine.
# usage: benches/queue.sh [SECONDS=10] [ROUNDS=3]
source "$(dirname "$0")/lib.sh"
secs=${1:-10}
rounds=${2:-3}
command -v oha >/dev/null || cargo install oha --locked >&2
[ -d "$BENCH_DIR/rules" ] || python3 "$shared/bench/gen_rules.py" "$BENCH_DIR" >&2
build_release
queue_exe=$(bench_exe queue)
bench_bin() { "$queue_exe" "$@"; }

bench_bin

# Uncapped: the figure is the queue's throughput, not queue.analysis.max_running's.
start_sandgnat 4 $'[queue.analysis]\nmax_running = 0'
trap stop_sandgnat EXIT
bridge=$(env -u DATABASE_URL "$bin" keys create --config "$run/sandgnat.toml" --name bench-bridge --role bridge)
SANDGNAT_SOCKET=$run/workers.sock SANDGNAT_KEY=$bridge \
  SANDGNAT_DB=$bench_db_url bench_bin
stop_sandgnat

samples=$BENCH_DIR/samples
mkdir -p "$samples"
sample=$samples/4k-queue.bin
[ -f "$sample" ] || head -c 4096 /dev/urandom > "$sample"
submit() {
  oha_json -z "${secs}s" -c 16 -m POST -D "$sample" -T application/octet-stream \
    -H "X-API-Key: $key" --unix-socket "$run/workers.sock" http://x/v1/submit
}
on=() off=()
for r in $(seq "$rounds"); do
  # No job runners in either mode: the figure is what enqueueing costs,
  # not what running static analysis beside the workers costs.
  start_sandgnat 4 $'[queue]\nrunners = 0'; on+=("$(submit)"); stop_sandgnat
  start_sandgnat 4 $'[queue]\nrunners = 0\n[debug]\nno_enqueue = true'; off+=("$(submit)"); stop_sandgnat
done
python3 - "${on[@]}" "${off[@]}" <<'PY'
import json, sys
runs = [json.loads(a) for a in sys.argv[1:]]
n = len(runs) // 2
on, off = runs[:n], runs[n:]
med = lambda xs: sorted(x["rps"] for x in xs)[len(xs) // 2]
print(json.dumps({"bench": "submit_4k_queue_cost", "rounds": n,
  "queue_on_rps": [x["rps"] for x in on], "queue_off_rps": [x["rps"] for x in off],
  "failed_on": sum(x["non_2xx"] + x["errors"] for x in on),
  "failed_off": sum(x["non_2xx"] + x["errors"] for x in off),
  "median_on": med(on), "median_off": med(off),
  "cost_pct": round(100 * (1 - med(on) / med(off)), 1)}))
PY
