#!/usr/bin/env bash
# POST /v1/submit, side by side in one run with the Flask baseline (same
# rules, same samples, same load generator): 4 KiB at 16 connections,
# 1 MiB at 8, 16 MiB at 4; then a worker's peak RSS while it takes one
# 128 MiB sample. Both sides hash, scan, store and record every sample.
# usage: benches/submit.sh [SECONDS=10]
source "$(dirname "$0")/lib.sh"
secs=${1:-10}
need_tools
start_sandgnat 4 $'[intake]\nmax_sample_bytes = 268435456'
trap stop_sandgnat EXIT
samples=$BENCH_DIR/samples
head -c 4096 "$samples/1m.bin" > "$samples/4k-bench.bin"
for spec in "4k-bench.bin 16" "1m.bin 8" "16m.bin 4"; do
  set -- $spec
  file=$1 conns=$2
  size=$(stat -c %s "$samples/$file")
  ours=$(oha_json -z "${secs}s" -c "$conns" -m POST -D "$samples/$file" -T application/octet-stream \
    -H "X-API-Key: $key" -H "X-Filename: $file" --unix-socket "$run/workers.sock" http://x/v1/submit)
  theirs=$(oha_json -z "${secs}s" -c "$conns" -m POST -D "$samples/$file" -T application/octet-stream \
    -H "X-API-Key: bench-key" -H "X-Filename: $file" http://127.0.0.1:18080/submit)
  python3 - "$ours" "$theirs" "$size" "$conns" "$file" <<'PY'
import json, sys
o, t, size, conns, name = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
mb = lambda r: round(r["rps"] * size / 1e6, 1)
print(json.dumps({"bench": "submit", "sample": name, "bytes": size, "connections": conns,
  "sandgnat": {**o, "mb_s": mb(o)}, "baseline": {**t, "mb_s": mb(t)},
  "rps_ratio": round(o["rps"] / max(t["rps"], 0.01), 2)}))
PY
done
# Peak RSS of the worker that takes a 128 MiB sample.
big=$samples/128m-bench.bin
[ -f "$big" ] || head -c $((128 << 20)) /dev/urandom > "$big"
peak_file=$(mktemp)
( peak=0; while kill -0 "$sandgnat_pid" 2>/dev/null; do
    for p in $(worker_pids); do r=$(rss_kib "$p" 2>/dev/null || echo 0); [ "${r:-0}" -gt "$peak" ] && peak=$r; done
    echo "$peak" > "$peak_file"; sleep 0.02; done ) &
watcher=$!
before=$(for p in $(worker_pids); do rss_kib "$p"; done | sort -n | tail -n1)
code=$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$run/workers.sock" -H "X-API-Key: $key" \
  -H 'Content-Type: application/octet-stream' --data-binary @"$big" http://x/v1/submit)
kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null || true
echo "{\"bench\":\"submit_128m_rss\",\"status\":$code,\"worker_rss_before_mib\":$((before / 1024)),\"worker_rss_peak_mib\":$(( $(cat "$peak_file") / 1024 ))}"
rm -f "$peak_file"
