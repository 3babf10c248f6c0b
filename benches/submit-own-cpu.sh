#!/usr/bin/env bash
# Issue 18: the appliance's own CPU per submission beside the scan's.
# Unique samples of SIZE bytes (4096, or 1048576) through the TLS front
# end (wrk, wrk_unique.lua; 16 connections, 8 for 1 MiB) for SECONDS; the
# CPU the appliance's processes used (master, front end, workers,
# recorder, metrics: not wrk, not Postgres) read from /proc, per
# submission; then one scan of a sample of that size with the same rules
# through the scan API (benches/engine.rs, ENGINE_BIN) on the same
# machine, and what is left outside the scan. With CEILING_BIN
# (benches/ceiling.rs) the hashes' cost is added to the scan's: one pass
# of the ceiling's work, and the share of the ceiling the appliance's CPU
# would reach with the machine's cores to itself (`pass_over_appliance`).
#   ENGINE_BIN=<engine bench> [CEILING_BIN=<ceiling bench>] SANDGNAT_BIN=<binary> \
#     BENCH_RULES=signature-base [SIZE=4096] bash benches/submit-own-cpu.sh [SECONDS=10] [RUNS=3]
source "$(dirname "$0")/lib.sh"
secs=${1:-10}; runs=${2:-3}
engine=${ENGINE_BIN:?ENGINE_BIN: an engine bench executable (benches/engine.sh says how)}
size=${SIZE:-4096}
case $size in
  4096) sample=4k; conns=16 ;;
  1048576) sample=1m; conns=8 ;;
  *) echo "SIZE must be 4096 or 1048576 (the engine bench's samples)" >&2; exit 2 ;;
esac
# The hashes' time for one sample of this size, from the ceiling's rates.
hash_ms=0
if [ -n "${CEILING_BIN:-}" ]; then
  hash_ms=$("$CEILING_BIN" | python3 -c '
import json, sys
c = json.loads(sys.stdin.readline())
mib = int(sys.argv[1]) / (1 << 20)
print(round(sum(1000 * mib / c[k] for k in ("sha256_mb_s", "sha1_mb_s", "md5_mb_s")), 4))' "$size")
fi
build_release
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
hz=$(getconf CLK_TCK)
tree() { local p=$1; echo "$p"; for c in $(pgrep -P "$p"); do tree "$c"; done; }
ticks() { local t=0 p; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
out=$here/results/own-cpu-$(date -u +%Y%m%dT%H%M%SZ).jsonl
for r in $(seq "$runs"); do
  start_sandgnat 4 $'[intake]\nmax_sample_bytes = 268435456\n[queue]\nrunners = 0'
  trap stop_sandgnat EXIT
  wrk -t2 -c"$conns" -d2s -s "$shared/bench/wrk_unique.lua" "https://127.0.0.1:$tls_port/v1/submit" -- "$size" "$key" >/dev/null
  pids=$(tree "$sandgnat_pid" | tr '\n' ' ')
  # By role: the word after the binary in each process's command line
  # (the master's is `serve`).
  roles=(); for p in $pids; do roles+=("$(tr '\0' ' ' < "/proc/$p/cmdline" | awk '{print $2}')"); done
  before=(); for p in $pids; do before+=("$(ticks "$p")"); done
  t0=$(ticks $pids)
  res=$(wrk -t2 -c"$conns" -d"${secs}s" -s "$shared/bench/wrk_unique.lua" "https://127.0.0.1:$tls_port/v1/submit" -- "$size" "$key" | grep '^{' | tail -n1)
  t1=$(ticks $pids)
  by_role=""; i=0
  for p in $pids; do by_role+="${by_role:+,}\"${roles[i]}\":$(( $(ticks "$p") - before[i] ))"; i=$((i + 1)); done
  stop_sandgnat
  scan_ms=$(BENCH_SCAN_SECONDS=2 "$engine" "$bench_rules" | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    if r.get("what") == "scan" and r.get("sample") == sys.argv[1]:
        print(r["median_ms"])' "$sample")
  python3 - "$res" "$((t1 - t0))" "$hz" "$scan_ms" "$r" "${BENCH_RULES:-synthetic}" "[$by_role]" "$size" "$hash_ms" <<'PY' | tee -a "$out"
import json, sys
res, ticks, hz, scan_ms, rnd, rules = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
size, hash_ms = int(sys.argv[8]), float(sys.argv[9])
n = res["requests"]
per_role = {}
for pair in json.loads(sys.argv[7].replace("[", "[{").replace("]", "}]").replace(",\"", "},{\"") or "[]"):
    for role, t in pair.items():
        per_role[role] = per_role.get(role, 0) + t
cpu_ms = ticks * 1000 / hz / n
own = cpu_ms - scan_ms
line = {"bench": "own_cpu", "round": rnd, "rules": rules, "bytes": size, "requests": n, "rps": res["rps"],
        "appliance_cpu_ms_per_submission": round(cpu_ms, 3), "scan_ms": scan_ms,
        "own_ms": round(own, 3), "own_over_scan": round(own / scan_ms, 2)}
if hash_ms:
    # One pass of the ceiling's work (hashes and scan) over what the
    # appliance spent: the share of the ceiling its CPU allows.
    line.update({"hash_ms": hash_ms, "pass_over_appliance": round((scan_ms + hash_ms) / cpu_ms, 3)})
print(json.dumps(dict(line,
                  ms_per_submission_by_role={k: round(v * 1000 / hz / n, 3) for k, v in per_role.items()})))
PY
done
echo "raw: $out" >&2
