#!/usr/bin/env bash
# The read side on a database of one million analyses:
#   - the change feed: analyses per second through one request
#     (GET /v1/export/analyses, the workers' Unix socket, curl), and the
#     serving worker's memory growth (peak PSS sampled every 50 ms, and
#     VmHWM, which counts RSS) during that request;
#   - list with a hash filter: latency under 16 connections through the
#     TLS front end (wrk at saturation; oha at fixed offered rates; each
#     request a different sha256);
#   - the plan of every list filter (EXPLAIN ANALYZE), to show each is an
#     index scan at this size.
# Usage: bash benches/export.sh [ANALYSES] [SECONDS]   (default 1000000 10)
# Prints one JSON line per figure and writes them, with the plans, to
# benches/results/export-<date>.{jsonl,plans.txt}.
source "$(dirname "$0")/lib.sh"
n=${1:-1000000}
secs=${2:-10}
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
build_release
mkdir -p "$BENCH_DIR"
[ -d "$BENCH_DIR/rules" ] || python3 "$shared/bench/gen_rules.py" "$BENCH_DIR" >&2
out=$repo/benches/results/export-$(date +%Y%m%dT%H%M%S)
mkdir -p "$repo/benches/results"
: > "$out.jsonl"
emit() { echo "$1" | tee -a "$out.jsonl"; }

start_sandgnat 2 $'[intake]\nstatic_analysis_enabled = false'
trap stop_sandgnat EXIT
admin=$(env -u DATABASE_URL "$bin" keys create --config "$run/sandgnat.toml" --name bench-admin --role admin)
db=$bench_db_url

echo "filling $n analyses" >&2
t0=$(date +%s.%N)
fill_analyses "$db" "$n"
emit "{\"case\":\"fill\",\"analyses\":$n,\"seconds\":$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN {printf "%.2f", a - b}')}"

pss_kib() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
workers=$(worker_pids)
declare -A pss0
for p in $workers; do pss0[$p]=$(pss_kib "$p"); reset_hwm "$p"; done
declare -A hwm0
for p in $workers; do hwm0[$p]=$(hwm_kib "$p"); done
peak=$BENCH_DIR/export-peak
: > "$peak"
( while :; do for p in $workers; do echo "$p $(pss_kib "$p")"; done >> "$peak"; sleep 0.05; done ) &
sampler=$!
t0=$(date +%s.%N)
lines=$(curl -sf --unix-socket "$run/workers.sock" -H "X-API-Key: $admin" http://x/v1/export/analyses | wc -l)
t=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN {printf "%.2f", a - b}')
kill $sampler; wait $sampler 2>/dev/null || true
growth=0; hwm_growth=0
for p in $workers; do
  g=$(awk -v p="$p" -v base="${pss0[$p]}" '$1 == p && $2 - base > m {m = $2 - base} END {print m + 0}' "$peak")
  [ "$g" -gt "$growth" ] && growth=$g
  h=$(( $(hwm_kib "$p") - ${hwm0[$p]} )); [ "$h" -gt "$hwm_growth" ] && hwm_growth=$h
done
emit "{\"case\":\"feed, one request, unix socket\",\"lines\":$lines,\"seconds\":$t,\"analyses_per_s\":$(awk -v n="$lines" -v t="$t" 'BEGIN {printf "%d", (n - 1) / t}'),\"worker_peak_pss_growth_kib\":$growth,\"worker_vmhwm_growth_kib\":$hwm_growth}"

# Lists by sha256 through TLS, each request a different existing sample.
cat > "$BENCH_DIR/list-hash.lua" <<LUA
local n = $n
wrk.headers["X-API-Key"] = "$admin"
math.randomseed(os.time())
request = function()
  -- sha256 of a decimal string, computed by Postgres beforehand
  return wrk.format("GET", "/v1/analyses?sha256=" .. hashes[math.random(#hashes)])
end
LUA
psql "$db" -qtAc "SELECT 'hashes = {' || string_agg('\"' || encode(sha256(i::text::bytea), 'hex') || '\"', ',') || '}' FROM generate_series(1, $n, greatest($n / 20000, 1)) i" > "$BENCH_DIR/list-hashes.lua"
cat "$BENCH_DIR/list-hashes.lua" "$BENCH_DIR/list-hash.lua" > "$BENCH_DIR/list.lua"
wrk -t2 -c16 -d"${secs}s" --latency -s "$BENCH_DIR/list.lua" "https://127.0.0.1:$tls_port" > "$BENCH_DIR/wrk-list.txt"
rps=$(awk '/Requests\/sec/ {print $2}' "$BENCH_DIR/wrk-list.txt")
p50=$(awk '$1 == "50%" {print $2}' "$BENCH_DIR/wrk-list.txt")
p99=$(awk '$1 == "99%" {print $2}' "$BENCH_DIR/wrk-list.txt")
non2xx=$(awk '/Non-2xx/ {print $NF}' "$BENCH_DIR/wrk-list.txt")
emit "{\"case\":\"list ?sha256= (unique hashes), TLS, 16 connections\",\"rps\":$rps,\"p50\":\"$p50\",\"p99\":\"$p99\",\"non_2xx\":${non2xx:-0}}"

# The same without TLS and the front end: the workers' Unix socket (oha).
psql "$db" -qtAc "SELECT 'http://x/v1/analyses?sha256=' || encode(sha256(i::text::bytea), 'hex') FROM generate_series(1, $n, greatest($n / 20000, 1)) i" > "$BENCH_DIR/list-urls.txt"
command -v oha >/dev/null || cargo install oha --locked >&2
u=$(oha_json -c 16 -z "${secs}s" --unix-socket "$run/workers.sock" -H "X-API-Key: $admin" --urls-from-file "$BENCH_DIR/list-urls.txt")
emit "{\"case\":\"list ?sha256= (unique hashes), unix socket, 16 connections\",\"oha\":$u}"

# The same TLS route at fixed offered rates (oha, 16 connections, latency
# corrected for coordinated omission): the p99 a client sees when the
# machine is not saturated. At saturation (above) the load generator, the
# front end, the workers and Postgres queue behind each other on two cores,
# and the tail is that queue, not the route.
psql "$db" -qtAc "SELECT 'https://127.0.0.1:$tls_port/v1/analyses?sha256=' || encode(sha256(i::text::bytea), 'hex') FROM generate_series(1, $n, greatest($n / 20000, 1)) i" > "$BENCH_DIR/list-urls-tls.txt"
for rate in ${LIST_RATES:-1000 2000 4000}; do
  u=$(oha_json -c 16 -q "$rate" --latency-correction -z "${secs}s" --insecure -H "X-API-Key: $admin" --urls-from-file "$BENCH_DIR/list-urls-tls.txt")
  emit "{\"case\":\"list ?sha256= (unique hashes), TLS, 16 connections, offered $rate req/s\",\"oha\":$u}"
done

# Plans of every filter, as the route builds them (a newest-first page of
# 101 cut from analyses, then joined to samples).
h=$(psql "$db" -qtAc "SELECT encode(sha256('777'::bytea), 'hex')")
read -r s1 m5 < <(psql "$db" -qtA -F ' ' -c "SELECT sha1, md5 FROM samples WHERE sha256 = '$h'")
{
for filter in "a.sample_sha256 = '$h'" \
  "a.sample_sha256 IN (SELECT sha256 FROM samples WHERE sha1 = '$s1')" \
  "a.sample_sha256 IN (SELECT sha256 FROM samples WHERE md5 = '$m5')" \
  "a.yara_matches @> '[{\"rule\": \"R7\"}]'" "a.status = 'failed'" "a.tlp = 'green'" \
  "a.tags @> ARRAY['t5']::text[]" "a.created_at > now() - interval '1 day'" \
  "a.created_at < now() - interval '1 day'"; do
  echo "== $filter"
  psql "$db" -qtAc "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON)
    SELECT a.id FROM (SELECT * FROM analyses a WHERE $filter
    ORDER BY a.created_at DESC, a.id DESC LIMIT 101) a JOIN samples s ON s.sha256 = a.sample_sha256
    ORDER BY a.created_at DESC, a.id DESC"
done
} > "$out.plans.txt"
if grep -q "Seq Scan" "$out.plans.txt"; then echo "a sequential scan in $out.plans.txt" >&2; exit 1; fi
echo "plans: $out.plans.txt (no sequential scan)" >&2
