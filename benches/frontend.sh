#!/usr/bin/env bash
# Front-end benchmark, side by side in one run: GET /healthz over TLS with
# keep-alive at 64 connections, sandgnat (pingora front end -> workers)
# against nginx (TLS) -> gunicorn from ../shared/bench. Prints one JSON line
# per side and the ratios. Loopback only.
#
# usage: benches/frontend.sh [SECONDS=10] [CONNECTIONS=64]
# Needs the baseline up (`bash ../shared/bench/baseline/baseline.sh up`);
# a baseline someone else started is used as it is and left running.
set -euo pipefail
secs=${1:-10}; conns=${2:-64}
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${BENCH_SHARED:-$root/../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/sandgnat-target}
(cd "$root" && cargo build --release --quiet)
bin=$CARGO_TARGET_DIR/release/sandgnat

curl -skf https://127.0.0.1:18443/healthz >/dev/null || {
  echo "baseline not running: bash $bench/baseline/baseline.sh up" >&2; exit 2; }

dir=$(mktemp -d /tmp/sandgnat-bench-fe.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$dir/sandgnat.toml" <<TOML
[server]
workers = 2
socket = "$dir/workers.sock"
$( [ "$(id -u)" = 0 ] && printf 'user = "nobody"\ngroup = "nogroup"\n' )
[proxy]
bind = ["127.0.0.1:$port"]
# One client address makes all the load: the rate limits would measure themselves.
rate_limit_per_ip = 0
rate_limit_per_key = 0
[metrics]
bind = "127.0.0.1:$mport"
[paths]
state_dir = "$dir"
[log]
format = "json"
access_log = "$dir/access.log"
TOML
chmod 0755 "$dir"
"$bin" serve --config "$dir/sandgnat.toml" >"$dir/out.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  curl -skf "https://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1
done

ours=$(bash "$bench/load.sh" "https://127.0.0.1:$port/healthz" "" "" "$conns" "$secs")
theirs=$(bash "$bench/load.sh" "https://127.0.0.1:18443/healthz" "" "" "$conns" "$secs")
direct=""
if command -v oha >/dev/null; then
  # The workers' socket without the front end, to price the front end itself.
  direct=$(oha --no-tui --output-format json -z "${secs}s" -c "$conns" --unix-socket "$dir/workers.sock" \
    http://localhost/healthz 2>/dev/null | python3 -c '
import json,sys; d=json.load(sys.stdin)
print(json.dumps({"rps": d["summary"]["requestsPerSec"], "p99_ms": d["latencyPercentiles"]["p99"]*1000}))' || true)
fi
echo "sandgnat_tls:      $ours"
echo "nginx_gunicorn:    $theirs"
[ -n "$direct" ] && echo "workers_direct:    $direct"
python3 - "$ours" "$theirs" "${direct:-{\}}" <<'PY'
import json, sys
o, t, d = (json.loads(a) for a in sys.argv[1:4])
print(json.dumps({
    "rps_ratio_vs_nginx_gunicorn": round(o["rps"] / t["rps"], 2),
    "p99_ratio_vs_nginx_gunicorn": round(o["p99_ms"] / t["p99_ms"], 2),
    **({"front_end_overhead_vs_direct": round(1 - o["rps"] / d["rps"], 2)} if d.get("rps") else {}),
}))
PY
