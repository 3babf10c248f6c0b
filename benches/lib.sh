# Shared by the benchmark scripts: the tools, the Python baseline, and a
# release SandGNAT with N workers and its own database ($BENCH_DB),
# its front end on a TLS and a plain loopback port.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
shared=${SHARED_DIR:-$repo/../shared}
export BENCH_DIR=${BENCH_DIR:-/tmp/sandgnat-bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/sandgnat-target}
# BENCH_PROFILE=deb measures the binary the package ships (the same
# settings as release, built by packaging/test-deb.sh) without a second
# optimised build.
profile=${BENCH_PROFILE:-release}
bin=$CARGO_TARGET_DIR/$profile/sandgnat
run=$BENCH_DIR/sandgnat
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
# Overridable so that two benchmark runs on one machine do not collide
# (give each its own BENCH_DIR and BENCH_DB); ports are free ones unless set.
bench_db=${BENCH_DB:-sandgnat_bench}
# Postgres on its local socket, as the package's default database.url and
# the baseline's DSN (dbname=baseline) both reach it; loopback TCP costs
# both ends a TCP stack per round trip.
pg_socket_dir=${BENCH_PG_SOCKET_DIR:-/var/run/postgresql}
bench_db_url="postgres://postgres@localhost/$bench_db?host=$pg_socket_dir"

# The rules both sides scan with. BENCH_RULES=synthetic (the default):
# gen_rules.py's 263 rules, the measure of the appliance's own overhead.
# BENCH_RULES=signature-base: the public signature-base set (its rule files
# are in yara/, which the baseline reads; both define the externals),
# the measure on rules operators run.
case ${BENCH_RULES:-synthetic} in
  synthetic) bench_rules=$BENCH_DIR/rules ;;
  signature-base) bench_rules=$(cd "$shared/bench/rules/signature-base/yara" && pwd) ;;
  *) echo "BENCH_RULES must be synthetic or signature-base, not ${BENCH_RULES}" >&2; exit 2 ;;
esac
export BASELINE_RULES_DIR=$bench_rules BENCH_RULES_DIR=$bench_rules

# Installs the load generators when missing, builds the release binary and
# starts the baseline unless it already answers (a baseline someone else
# started is used as it is and left running, if its rules are ours).
need_tools() {
  command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
  command -v oha >/dev/null || { echo "installing oha (load generator for Unix sockets)" >&2; cargo install oha --locked >&2; }
  build_release
  baseline_up
}

# SANDGNAT_BIN=path skips the build and runs that binary instead.
# The target directory is shared with other work trees, whose builds
# replace release/sandgnat: build, then run a private copy, taken only
# while cargo's dep-info says the binary came from this tree.
build_release() {
  if [ -n "${SANDGNAT_BIN:-}" ]; then bin=$SANDGNAT_BIN; echo "using SANDGNAT_BIN=$bin (not rebuilt)" >&2; return; fi
  local copy=$BENCH_DIR/bin/sandgnat-$(basename "$repo")
  mkdir -p "$BENCH_DIR/bin"
  for _ in 1 2 3; do
    (cd "$repo" && cargo build --profile "$profile" --locked >&2)
    if grep -q "^$CARGO_TARGET_DIR/$profile/sandgnat: $repo/" "$CARGO_TARGET_DIR/$profile/sandgnat.d"; then
      cp "$CARGO_TARGET_DIR/$profile/sandgnat" "$copy.tmp" && mv "$copy.tmp" "$copy"
      grep -q "^$CARGO_TARGET_DIR/$profile/sandgnat: $repo/" "$CARGO_TARGET_DIR/$profile/sandgnat.d" && { bin=$copy; return; }
    fi
    echo "$profile/sandgnat was just rebuilt from another tree; building again" >&2
  done
  echo "cannot get a $profile binary of $repo" >&2; return 1
}

# bench_exe NAME: the path of benches/NAME.rs built with the benchmark
# profile, to run directly (`cargo bench` would rebuild the crate under
# the bench profile).
bench_exe() {
  (cd "$repo" && cargo build --profile "$profile" --locked --bench "$1" --message-format=json 2>/dev/null) |
    python3 -c 'import json, sys
for m in map(json.loads, sys.stdin):
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1"
}

# The baseline reads its rules once, at start: one already running is used
# only if it was started with the same rules (recorded beside it here;
# none recorded, or recorded before it started: baseline.sh's default,
# the synthetic set), so a
# comparison never pits two rule sets against each other.
baseline_up() {
  local marker=$BENCH_DIR/baseline/rules-dir running
  if curl -skf https://127.0.0.1:18443/healthz >/dev/null 2>&1 && curl -sf http://127.0.0.1:18080/healthz >/dev/null 2>&1; then
    # A record older than the running gunicorn is an earlier start's.
    running=$BENCH_DIR/rules
    [ "$marker" -nt "$BENCH_DIR/baseline/gunicorn.pid" ] && running=$(cat "$marker")
    if [ "$running" != "$bench_rules" ]; then
      echo "the running baseline scans with $running, not $bench_rules;" \
        "stop it (bash $shared/bench/baseline/baseline.sh down) or run with its BENCH_RULES" >&2
      return 1
    fi
    return
  fi
  bash "$shared/bench/baseline/baseline.sh" up >&2
  echo "$bench_rules" > "$marker"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_sandgnat WORKERS [extra toml]: sets sandgnat_pid, key, tls_port,
# plain_port. The rate limits are off: one client address makes all the
# load, and the limits would only measure themselves.
start_sandgnat() {
  local workers=$1 extra=${2:-}
  # Another appliance still on the benchmark database (one left running)
  # would reconnect to the new one and work off its jobs, spoiling both
  # sides' figures: refuse. A run just stopped may take a moment to let go.
  local busy=0
  for _ in $(seq 50); do
    busy=$(psql "$admin_url" -qtAc "SELECT count(*) FROM pg_stat_activity WHERE datname = '$bench_db'")
    [ "$busy" = 0 ] && break
    sleep 0.1
  done
  if [ "$busy" != 0 ]; then
    echo "$busy connection(s) to $bench_db: another sandgnat is using the benchmark database; stop it (pgrep -af 'sandgnat.* serve') or set BENCH_DB" >&2
    return 1
  fi
  rm -rf "$run"; mkdir -p "$run"; chmod 0755 "$run"
  psql "$admin_url" -qtAc "DROP DATABASE IF EXISTS $bench_db WITH (FORCE)" >/dev/null
  psql "$admin_url" -qtAc "CREATE DATABASE $bench_db" >/dev/null
  local user=""; [ "$(id -u)" = 0 ] && user=$'user = "nobody"\ngroup = "nogroup"'
  tls_port=${BENCH_TLS_PORT:-$(free_port)}; plain_port=${BENCH_PLAIN_PORT:-$(free_port)}
  metrics_port=${BENCH_METRICS_PORT:-$(free_port)}
  cat > "$run/sandgnat.toml" <<TOML
[server]
workers = $workers
socket = "$run/workers.sock"
$user
[proxy]
bind = ["127.0.0.1:$tls_port"]
plain_bind = ["127.0.0.1:$plain_port"]
rate_limit_per_ip = 0
rate_limit_per_key = 0
[metrics]
bind = "127.0.0.1:$metrics_port"
[paths]
state_dir = "$run"
[database]
url = "$bench_db_url"
# The bench connects as postgres, a superuser: allowed for a bench only.
allow_owner = true
[yara]
rules_dir = "$bench_rules"
[log]
format = "json"
access_log = "$run/access.log"
error_log = "$run/error.log"
$extra
TOML
  # A master started as root takes over only a state directory that is
  # already the service account's (or empty).
  [ "$(id -u)" = 0 ] && chown nobody:nogroup "$run"
  env -u DATABASE_URL -u REDIS_URL "$bin" migrate --config "$run/sandgnat.toml" >&2
  key=$(env -u DATABASE_URL "$bin" keys create --config "$run/sandgnat.toml" --name bench --role submitter)
  env -u DATABASE_URL -u REDIS_URL "$bin" serve --config "$run/sandgnat.toml" --no-migrate > "$run/out.log" 2>&1 &
  sandgnat_pid=$!
  for _ in $(seq 100); do
    curl -sf --unix-socket "$run/workers.sock" http://x/healthz >/dev/null 2>&1 && break
    sleep 0.1
  done
  # Every worker and the front end up, not just the first worker.
  for _ in $(seq 100); do
    [ "$(curl -s "http://127.0.0.1:$metrics_port/metrics" | grep -c '^sandgnat_worker_max_connections')" -ge "$workers" ] &&
      curl -skf "https://127.0.0.1:$tls_port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -skf "https://127.0.0.1:$tls_port/healthz" >/dev/null || { echo "sandgnat did not come up; see $run/out.log" >&2; return 1; }
  # Ready for submissions: the database, the rules and the recorder.
  for _ in $(seq 100); do
    curl -sf --unix-socket "$run/workers.sock" http://x/readyz >/dev/null 2>&1 && break
    sleep 0.1
  done
}

# What autovacuum does on a production server, done by hand: this
# machine's Postgres runs with autovacuum off, so tables are never
# analyzed, and a statement the recorder planned while `samples` was
# nearly empty keeps its sequential scan as the table grows (each unique
# round adds thousands of rows; the next rounds' submissions then pay for
# reading them all). Both sides' databases, before each measurement, once
# the appliance has recorded something: statistics of empty tables would
# make every plan a sequential scan, which autovacuum never leaves for long.
analyze_bench_dbs() {
  [ "$(psql "$bench_db_url" -qtAc 'SELECT count(*) > 0 FROM analyses')" = t ] || return 0
  psql "$bench_db_url" -qc ANALYZE >/dev/null
  psql "${BASELINE_DSN:-dbname=baseline}" -qc ANALYZE >/dev/null 2>&1 || true
}

stop_sandgnat() {
  [ -n "${sandgnat_pid:-}" ] && kill -TERM "$sandgnat_pid" 2>/dev/null && wait "$sandgnat_pid" 2>/dev/null || true
  sandgnat_pid=""
}

# The master's children by role (the binary may be a renamed copy).
child_pids() { local p; for p in $(pgrep -P "$sandgnat_pid"); do tr '\0' ' ' < "/proc/$p/cmdline" | grep -q "^[^ ]* $1 " && echo "$p"; done; true; }
worker_pids() { child_pids worker; }
front_end_pid() { local p; p=$(child_pids front-end); echo "${p%%$'\n'*}"; }
gunicorn_worker_pids() { pgrep -P "$(cat "$BENCH_DIR/baseline/gunicorn.pid")" || true; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
# Resets a process's peak RSS (VmHWM) to its current RSS.
reset_hwm() { echo 5 > "/proc/$1/clear_refs"; }
# A JSON list of the RSS (MiB) of each pid given.
rss_list_mib() { local out="" p; for p in "$@"; do out+="${out:+,}$(awk '/^VmRSS/ {printf "%.1f", $2/1024}' "/proc/$p/status")"; done; echo "[$out]"; }

# oha_json ARGS... -> one JSON line: rps, p50/p99 ms, errors
oha_json() {
  oha --no-tui --output-format json "$@" 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
s, l = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
print(json.dumps({"rps": round(s["requestsPerSec"], 1), "p50_ms": round(l["p50"] * 1000, 3),
  "p99_ms": round(l["p99"] * 1000, 3), "ok": ok, "non_2xx": sum(codes.values()) - ok,
  "errors": sum(d.get("errorDistribution", {}).values())}))'
}

# fill_analyses DB_URL N: N analyses of N distinct samples, spread over
# every status, TLP, 97 tags and 89 YARA rules, one a second back in time,
# all by the database's first API key; then VACUUM ANALYZE.
fill_analyses() {
  psql "$1" -qv ON_ERROR_STOP=1 <<SQL
INSERT INTO samples (sha256, sha1, md5, size, file_type, storage_path)
SELECT encode(sha256(i::text::bytea), 'hex'), left(encode(sha512(i::text::bytea), 'hex'), 40),
       md5(i::text), 1 + i, 'data', '' FROM generate_series(1, $2) i;
INSERT INTO analyses (id, sample_sha256, api_key_id, filename, tags, tlp, status, yara_matches, created_at)
SELECT gen_random_uuid(), encode(sha256(i::text::bytea), 'hex'), (SELECT min(id) FROM api_keys),
       'f' || i, ARRAY['t' || i % 97], (ARRAY['clear','green','amber','amber+strict','red'])[1 + i % 5],
       (ARRAY['queued','running','completed','failed'])[1 + i % 4],
       jsonb_build_array(jsonb_build_object('rule', 'R' || i % 89, 'namespace', 'ns',
                         'tags', '[]'::jsonb, 'meta', '{}'::jsonb, 'strings', '[]'::jsonb)),
       now() - i * interval '1 second'
  FROM generate_series(1, $2) i;
VACUUM ANALYZE samples;
VACUUM ANALYZE analyses;
SQL
}
