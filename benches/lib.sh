# Shared by the benchmark scripts: build and start SandGNAT (release) with
# N workers and its own database, next to the Python baseline.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
shared=${SHARED_DIR:-$repo/../shared}
export BENCH_DIR=${BENCH_DIR:-/tmp/sandgnat-bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/sandgnat-target}
bin=$CARGO_TARGET_DIR/release/sandgnat
run=$BENCH_DIR/sandgnat
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

need_tools() {
  command -v oha >/dev/null || { echo "installing oha (load generator for Unix sockets)" >&2; cargo install oha --locked >&2; }
  (cd "$repo" && cargo build --release --locked >&2)
  bash "$shared/bench/baseline/baseline.sh" up >&2
}

# start_sandgnat WORKERS [extra toml]
start_sandgnat() {
  local workers=$1 extra=${2:-}
  rm -rf "$run"; mkdir -p "$run"; chmod 0755 "$run"
  psql "$admin_url" -qtAc "DROP DATABASE IF EXISTS sandgnat_bench WITH (FORCE)" >/dev/null
  psql "$admin_url" -qtAc "CREATE DATABASE sandgnat_bench" >/dev/null
  local user=""; [ "$(id -u)" = 0 ] && user=$'user = "nobody"\ngroup = "nogroup"'
  cat > "$run/sandgnat.toml" <<TOML
[server]
workers = $workers
socket = "$run/workers.sock"
$user
[proxy]
bind = ["127.0.0.1:28443"]
[metrics]
bind = "127.0.0.1:28001"
[paths]
state_dir = "$run"
[database]
url = "postgres://postgres@127.0.0.1:5432/sandgnat_bench"
[yara]
rules_dir = "$BENCH_DIR/rules"
[log]
format = "json"
access_log = "$run/access.log"
error_log = "$run/error.log"
$extra
TOML
  env -u DATABASE_URL -u REDIS_URL "$bin" migrate --config "$run/sandgnat.toml" >&2
  key=$(env -u DATABASE_URL "$bin" keys create --config "$run/sandgnat.toml" --name bench --role submitter)
  env -u DATABASE_URL -u REDIS_URL "$bin" serve --config "$run/sandgnat.toml" --no-migrate > "$run/out.log" 2>&1 &
  sandgnat_pid=$!
  for _ in $(seq 100); do
    curl -sf --unix-socket "$run/workers.sock" http://x/healthz >/dev/null 2>&1 && break
    sleep 0.1
  done
  # Every worker up, not just the first.
  for _ in $(seq 100); do
    [ "$(curl -s http://127.0.0.1:28001/metrics | grep -c '^sandgnat_worker_max_connections')" -ge "$workers" ] && break
    sleep 0.1
  done
}

stop_sandgnat() {
  [ -n "${sandgnat_pid:-}" ] && kill -TERM "$sandgnat_pid" 2>/dev/null && wait "$sandgnat_pid" 2>/dev/null || true
}

worker_pids() { pgrep -f "sandgnat worker .*--master-pid $sandgnat_pid" || true; }
gunicorn_worker_pids() { pgrep -P "$(cat "$BENCH_DIR/baseline/gunicorn.pid")" || true; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# oha_json ARGS... -> one JSON line: rps, p50/p99 ms, errors
oha_json() {
  oha --no-tui --output-format json "$@" 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
s, l = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
print(json.dumps({"rps": round(s["requestsPerSec"], 1), "p50_ms": round(l["p50"] * 1000, 2),
  "p99_ms": round(l["p99"] * 1000, 2), "ok": ok, "non_2xx": sum(codes.values()) - ok,
  "errors": sum(d.get("errorDistribution", {}).values())}))'
}
