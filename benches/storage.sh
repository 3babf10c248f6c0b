#!/usr/bin/env bash
# The sample store's cost (issue 21): storage.backend = "s3" against a
# single-node Garage on this machine (data and metadata synced, as the
# local quarantine is) side by side with "local", in alternating rounds:
#   - unique submissions (new bytes every time: hash, scan, store, record)
#     of 1 MiB and 16 MiB, one at a time on the workers' Unix socket: the
#     time per submission, and the ratio s3/local (goal: at most 1.3);
#   - the front end's and the workers' PSS while one 128 MiB sample goes
#     through the TLS front end into S3 (sampled every 50 ms): flat means
#     the upload is streamed, not held.
# Usage: bash benches/storage.sh [SUBMISSIONS=20] [ROUNDS=3]
# Garage comes from packaging/dev/bootstrap.sh (/var/tmp/sandgnat-s3/garage,
# or GARAGE=path). Prints one JSON line per figure and writes them to
# benches/results/storage-<date>.jsonl.
source "$(dirname "$0")/lib.sh"
n=${1:-20}
rounds=${2:-3}
garage=${GARAGE:-/var/tmp/sandgnat-s3/garage/bin/garage}
[ -x "$garage" ] || { echo "no Garage at $garage: run packaging/dev/bootstrap.sh" >&2; exit 1; }
build_release
mkdir -p "$BENCH_DIR"
[ -d "$BENCH_DIR/rules" ] || python3 "$shared/bench/gen_rules.py" "$BENCH_DIR" >&2
out=$repo/benches/results/storage-$(date +%F)
mkdir -p "$repo/benches/results"
: > "$out.jsonl"
emit() { echo "$1" | tee -a "$out.jsonl"; }

# Garage: one node, SQLite metadata, replication 1, fsync on, loopback.
gdir=$BENCH_DIR/garage
rm -rf "$gdir"; mkdir -p "$gdir"
s3_port=$(free_port); rpc_port=$(free_port)
export AWS_ACCESS_KEY_ID=GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
export AWS_SECRET_ACCESS_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
bucket=bench-samples
cat > "$gdir/garage.toml" <<TOML
metadata_dir = "$gdir/meta"
data_dir = "$gdir/data"
db_engine = "sqlite"
replication_factor = 1
metadata_fsync = true
data_fsync = true
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"
TOML
GARAGE_DEFAULT_ACCESS_KEY=$AWS_ACCESS_KEY_ID GARAGE_DEFAULT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
  GARAGE_DEFAULT_BUCKET=$bucket RUST_LOG=garage=warn \
  "$garage" -c "$gdir/garage.toml" server --single-node --default-bucket > "$gdir/garage.log" 2>&1 &
garage_pid=$!
cleanup() { stop_sandgnat; kill "$garage_pid" 2>/dev/null; wait "$garage_pid" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do
  # Any S3 answer (an unsigned request is refused with 403) means it is up.
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$s3_port/$bucket/" || true)
  [ "$code" != 000 ] && break
  sleep 0.2
done
s3_toml="[storage]
backend = \"s3\"
endpoint = \"http://127.0.0.1:$s3_port\"
bucket = \"$bucket\"
region = \"garage\"
prefix = \"bench\"
allow_http = true"

# One client, one submission at a time, new bytes every time; the bytes
# are made before each request's clock starts. Prints one JSON line.
submit_unique() {
  python3 - "$run/workers.sock" "$key" "$1" "$2" "$3" <<'PY'
import http.client, json, os, socket, statistics, sys, time
sock, key, size, count, backend = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sock)
times, bad = [], 0
for _ in range(count):
    body = os.urandom(size)
    c = Unix("x", timeout=120)
    t = time.perf_counter()
    c.request("POST", "/v1/submit", body, {"X-API-Key": key, "Content-Type": "application/octet-stream"})
    r = c.getresponse(); r.read()
    times.append(time.perf_counter() - t)
    bad += r.status != 202
    c.close()
print(json.dumps({"backend": backend, "size": size, "submissions": count, "not_202": bad,
                  "median_ms": round(statistics.median(times) * 1000, 2),
                  "mean_ms": round(statistics.mean(times) * 1000, 2),
                  "max_ms": round(max(times) * 1000, 2)}))
PY
}

declare -A runs
for r in $(seq "$rounds"); do
  for backend in local s3; do
    extra=$'[queue]\nrunners = 0'
    [ "$backend" = s3 ] && extra+=$'\n'"$s3_toml"
    start_sandgnat 2 "$extra"
    for size in 1048576 16777216; do
      line=$(submit_unique "$size" "$n" "$backend")
      emit "$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["round"]=int(sys.argv[2]); print(json.dumps(d))' "$line" "$r")"
      runs[$backend-$size]+="$line"$'\n'
    done
    stop_sandgnat
  done
done
for size in 1048576 16777216; do
  emit "$(python3 - "$size" "${runs[local-$size]}" "${runs[s3-$size]}" <<'PY'
import json, statistics, sys
size = int(sys.argv[1])
local = [json.loads(l) for l in sys.argv[2].splitlines() if l]
s3 = [json.loads(l) for l in sys.argv[3].splitlines() if l]
m = lambda runs: statistics.median(r["median_ms"] for r in runs)
print(json.dumps({"bench": "storage_unique_submission", "size": size, "rounds": len(local),
                  "local_median_ms": m(local), "s3_median_ms": m(s3),
                  "s3_over_local": round(m(s3) / m(local), 2),
                  "not_202": sum(r["not_202"] for r in local + s3)}))
PY
)"
done

# Memory while a 128 MiB sample goes through the front end into S3.
start_sandgnat 1 $'[queue]\nrunners = 0\n[intake]\nmax_sample_bytes = 268435456\n'"$s3_toml"
big=$BENCH_DIR/samples/128m-unique.bin
mkdir -p "$BENCH_DIR/samples"
head -c $((128 << 20)) /dev/urandom > "$big"
pss_kib() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
fe=$(front_end_pid); workers=$(worker_pids)
declare -A pss0
for p in $fe $workers; do pss0[$p]=$(pss_kib "$p"); done
peak=$BENCH_DIR/pss-peak.txt; : > "$peak"
( while :; do for p in $fe $workers; do echo "$p $(pss_kib "$p")"; done >> "$peak"; sleep 0.05; done ) &
sampler=$!
t0=$(date +%s.%N)
status=$(curl -sk -o /dev/null -w '%{http_code}' -H "X-API-Key: $key" -H 'Content-Type: application/octet-stream' \
  --data-binary "@$big" "https://127.0.0.1:$tls_port/v1/submit")
t1=$(date +%s.%N)
kill "$sampler"; wait "$sampler" 2>/dev/null || true
growth() { awk -v p="$1" -v base="${pss0[$1]}" '$1 == p && $2 - base > m {m = $2 - base} END {print m + 0}' "$peak"; }
wg=0; for p in $workers; do g=$(growth "$p"); [ "$g" -gt "$wg" ] && wg=$g; done
emit "{\"bench\":\"storage_128m_upload_s3\",\"status\":$status,\"seconds\":$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}'),\"front_end_pss_kib\":${pss0[$fe]},\"front_end_peak_pss_growth_kib\":$(growth "$fe"),\"worker_peak_pss_growth_kib\":$wg}"
rm -f "$big"
