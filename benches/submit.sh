#!/usr/bin/env bash
# POST /v1/submit, side by side in one run with the Flask baseline (same
# rules, same samples, same load generator, alternating round by round):
# 4 KiB at 16 connections, 1 MiB at 8, 16 MiB at 4, the same bytes every
# time ("repeat": after the first, neither side writes a file, and the
# appliance reuses its stored YARA answer), on the workers' socket against
# gunicorn direct; then 4 KiB and 1 MiB with different bytes every request
# ("unique": both sides hash, scan, sync, rename and record each one;
# ../shared/bench/wrk_unique.lua), both through their TLS front ends. Each round first measures the machine's
# ceiling for the work (benches/ceiling.rs: one pass of sha256+sha1+md5+
# YARA over bytes in memory, per core, times the cores), and each figure
# is read against its own round's ceiling: on a shared machine the cores
# slow down and speed up within one run, for the ceiling as for both
# sides. Last, a worker's peak RSS while it takes one 128 MiB sample.
# usage: benches/submit.sh [SECONDS=10] [ROUNDS=3]
#   BENCH_RULES=signature-base: both sides scan with the public rule set
#   (benches/lib.sh). SUBMIT_CASES="4k-unique 128m-rss": only those cases
#   (4k-bench.bin 1m.bin 16m.bin 4k-unique 1m-unique 128m-rss).
source "$(dirname "$0")/lib.sh"
secs=${1:-10}
rounds=${2:-3}
need_tools
samples=$BENCH_DIR/samples
head -c 4096 "$samples/1m.bin" > "$samples/4k-bench.bin"

ceiling_exe=$(bench_exe ceiling)

# No job runners: the baseline queues its Celery task and runs no Celery
# worker, so both sides enqueue the analysis and neither runs it here
# (SandGNAT's static analysis of each sample would take the same cores).
start_sandgnat 4 $'[intake]\nmax_sample_bytes = 268435456\n[queue]\nrunners = 0'
trap stop_sandgnat EXIT
results=()
cases=${SUBMIT_CASES:-4k-bench.bin 1m.bin 16m.bin 4k-unique 1m-unique 128m-rss}
wanted() { [[ " $cases " == *" $1 "* ]]; }
# wrk_json URL SIZE KEY CONNS: wrk_unique.lua's one JSON line.
wrk_json() {
  wrk -t2 -c"$4" -d"${secs}s" -s "$shared/bench/wrk_unique.lua" "$1" -- "$2" "$3" | grep '^{' | tail -n1
}
for r in $(seq "$rounds"); do
  ceiling=$("$ceiling_exe")
  echo "$ceiling"
  for spec in "4k-bench.bin 16 repeat" "1m.bin 8 repeat" "16m.bin 4 repeat" \
              "4k-unique 16 unique 4096" "1m-unique 8 unique 1048576"; do
    set -- $spec
    file=$1 conns=$2 kind=$3
    wanted "$file" || continue
    analyze_bench_dbs
    if [ "$kind" = repeat ]; then
      size=$(stat -c %s "$samples/$file")
      ours=$(oha_json -z "${secs}s" -c "$conns" -m POST -D "$samples/$file" -T application/octet-stream \
        -H "X-API-Key: $key" -H "X-Filename: $file" --unix-socket "$run/workers.sock" http://x/v1/submit)
      theirs=$(oha_json -z "${secs}s" -c "$conns" -m POST -D "$samples/$file" -T application/octet-stream \
        -H "X-API-Key: bench-key" -H "X-Filename: $file" http://127.0.0.1:18080/submit)
    else
      size=$4
      ours=$(wrk_json "https://127.0.0.1:$tls_port/v1/submit" "$size" "$key" "$conns")
      theirs=$(wrk_json "https://127.0.0.1:18443/submit" "$size" bench-key "$conns")
    fi
    line=$(python3 - "$ours" "$theirs" "$size" "$conns" "$file" "$r" "$ceiling" "$kind" "${BENCH_RULES:-synthetic}" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
size, conns, name, rnd = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
ceiling = json.loads(sys.argv[7])["ceiling_mb_s"]
mb = lambda x: round(x["rps"] * size / 1e6, 1)
print(json.dumps({"bench": "submit", "round": rnd, "sample": name, "bytes": size,
  "samples": sys.argv[8], "rules": sys.argv[9],
  "connections": conns, "sandgnat": {**o, "mb_s": mb(o)}, "baseline": {**t, "mb_s": mb(t)},
  "rps_ratio": round(o["rps"] / max(t["rps"], 0.01), 2), "ceiling_mb_s": ceiling,
  "pct_of_ceiling": round(100 * mb(o) / ceiling, 1)}))
PY
)
    echo "$line"
    results+=("$line")
  done
done
python3 - "${results[@]}" <<'PY'
import json, sys
runs = [json.loads(a) for a in sys.argv[1:]]
for name in dict.fromkeys(r["sample"] for r in runs):
    rs = [r for r in runs if r["sample"] == name]
    med = lambda xs: sorted(xs)[len(xs) // 2]
    ours = med([r["sandgnat"]["mb_s"] for r in rs])
    print(json.dumps({"bench": "submit_summary", "sample": name, "samples": rs[0]["samples"],
      "rules": rs[0]["rules"], "rounds": len(rs),
      "median_rps": med([r["sandgnat"]["rps"] for r in rs]),
      "median_baseline_rps": med([r["baseline"]["rps"] for r in rs]),
      "median_rps_ratio": med([r["rps_ratio"] for r in rs]),
      "median_mb_s": ours, "median_ceiling_mb_s": med([r["ceiling_mb_s"] for r in rs]),
      "pct_of_ceiling_by_round": [r["pct_of_ceiling"] for r in rs],
      "median_pct_of_ceiling": med([r["pct_of_ceiling"] for r in rs]),
      "failed": sum(r["sandgnat"]["non_2xx"] + r["sandgnat"]["errors"] for r in rs),
      "baseline_failed": sum(r["baseline"]["non_2xx"] + r["baseline"]["errors"] for r in rs)}))
PY

# Peak RSS of the worker that takes a 128 MiB sample, and of its private
# part (RssAnon): the worker maps the sample file to scan it and drops
# the mapping's resident pages as the scan goes (src/scan/mapped.rs), so
# VmRSS should stay far below the sample's size.
wanted 128m-rss || exit 0
big=$samples/128m-bench.bin
[ -f "$big" ] || head -c $((128 << 20)) /dev/urandom > "$big"
peak_file=$(mktemp)
( peak=0 anon=0; while kill -0 "$sandgnat_pid" 2>/dev/null; do
    for p in $(worker_pids); do
      read -r r a < <(awk '/^VmRSS/ {r=$2} /^RssAnon/ {a=$2} END {print r+0, a+0}' "/proc/$p/status" 2>/dev/null || echo 0 0)
      [ "${r:-0}" -gt "$peak" ] && peak=$r; [ "${a:-0}" -gt "$anon" ] && anon=$a
    done
    echo "$peak $anon" > "$peak_file"; sleep 0.02; done ) &
watcher=$!
before=$(for p in $(worker_pids); do rss_kib "$p"; done | sort -n | tail -n1)
code=$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$run/workers.sock" -H "X-API-Key: $key" \
  -H 'Content-Type: application/octet-stream' --data-binary @"$big" http://x/v1/submit)
kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null || true
read -r peak anon < "$peak_file"
echo "{\"bench\":\"submit_128m_rss\",\"status\":$code,\"worker_rss_before_mib\":$((before / 1024)),\"worker_rss_peak_mib\":$((peak / 1024)),\"worker_rss_anon_peak_mib\":$((anon / 1024))}"
rm -f "$peak_file"
