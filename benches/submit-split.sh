#!/usr/bin/env bash
# Where a submission's CPU goes, and what each binary given makes of it:
# POST /v1/submit of one sample on the workers' socket for SECONDS, with
# the appliance's processes, Postgres and oha sampled by pidstat mid-run
# (their %CPU of one core, and CPU per submission in ms). Binaries
# alternate round by round, so a noisy machine costs each the same.
# usage: benches/submit-split.sh SAMPLE CONNS ROUNDS BIN [BIN...]
#   e.g. benches/submit-split.sh 4k-bench.bin 16 3 /tmp/sandgnat-old /tmp/sandgnat-new
source "$(dirname "$0")/lib.sh"
sample=$1 conns=$2 rounds=$3; shift 3
secs=${SECONDS_PER_RUN:-10}
command -v pidstat >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sysstat >/dev/null; }
SANDGNAT_BIN=$1 need_tools
samples=$BENCH_DIR/samples
head -c 4096 "$samples/1m.bin" > "$samples/4k-bench.bin"
trap stop_sandgnat EXIT
for r in $(seq "$rounds"); do
  for b in "$@"; do
    bin=$b
    start_sandgnat 4 $'[intake]\nmax_sample_bytes = 268435456\n[queue]\nrunners = 0'
    split=$(mktemp)
    ( sleep $((secs / 3)); pidstat -u -p ALL $((secs / 2)) 1 2>/dev/null | grep -v Average |
        awk -v exe="$(basename "$b" | cut -c1-15)" '$NF == exe || $NF == "tokio-rt-worker" || $NF == "tracing-appende" {s["sandgnat"]+=$8}
             $NF == "postgres" {s["postgres"]+=$8} $NF == "oha" {s["oha"]+=$8}
             END {printf "{\"sandgnat\":%.1f,\"postgres\":%.1f,\"oha\":%.1f}", s["sandgnat"], s["postgres"], s["oha"]}' > "$split" ) &
    sampler=$!
    out=$(oha_json -z "${secs}s" -c "$conns" -m POST -D "$samples/$sample" -T application/octet-stream \
      -H "X-API-Key: $key" -H "X-Filename: $sample" --unix-socket "$run/workers.sock" http://x/v1/submit)
    wait "$sampler"
    stop_sandgnat
    python3 - "$out" "$(cat "$split")" "$b" "$r" "$sample" "$conns" <<'PY'
import json, sys
o, cpu = json.loads(sys.argv[1]), json.loads(sys.argv[2])
per = {k: round(10 * v / max(o["rps"], 0.01), 3) for k, v in cpu.items()}
print(json.dumps({"bench": "submit_split", "round": int(sys.argv[4]), "binary": sys.argv[3],
  "sample": sys.argv[5], "connections": int(sys.argv[6]), **o, "cpu_pct": cpu, "cpu_ms_per_submission": per}))
PY
    rm -f "$split"
  done
done
