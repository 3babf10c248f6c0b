#!/usr/bin/env bash
# Regenerates packaging/link/hot-functions.order: the functions a booted
# worker runs, which build.rs has the linker place side by side (build.rs
# says why). Run it after a dependency or toolchain upgrade, or after a
# change to the request path, from the repository root, as root:
#
#   bash packaging/link/regenerate.sh
#
# It builds the deb profile, runs the appliance with one worker under
# callgrind (valgrind follows the master into the worker; the front end,
# the recorder and the job runners run natively), and records which
# functions of the binary the worker executes after it has booted, in
# three parts: idle (heartbeat, key refresh, queue upkeep), the start-up
# probes (/healthz, /readyz, through the front end too), and submissions
# and reads (raw, multipart, 4 KiB inline, 1 MiB spooled, EICAR, errors).
# The list is written idle first, so what an idle worker touches is
# densest. Uses the machine's Postgres (DATABASE_URL, default the local
# server) with a database of its own, dropped at the end.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/sandgnat-target}
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=sandgnat_link_order
command -v valgrind >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
(cd "$repo" && cargo build --profile deb --locked)
work=$(mktemp -d /tmp/sandgnat-order.XXXXXX)
chmod 0755 "$work"
bin=$work/sandgnat
cp "$CARGO_TARGET_DIR/deb/sandgnat" "$bin"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tls=$(port); metrics=$(port)
url="postgres://postgres@localhost/$db?host=/var/run/postgresql"
psql "$admin_url" -qtAc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
psql "$admin_url" -qtAc "CREATE DATABASE $db" >/dev/null
# Root throughout: valgrind writes its profile when the worker exits,
# and a worker that dropped to another account could not.
cat > "$work/sandgnat.toml" <<TOML
[server]
workers = 1
timeout = 120
socket = "$work/workers.sock"
user = "root"
group = "root"
[proxy]
bind = ["127.0.0.1:$tls"]
rate_limit_per_ip = 0
rate_limit_per_key = 0
[metrics]
bind = "127.0.0.1:$metrics"
[paths]
state_dir = "$work/state"
[database]
url = "$url"
# As postgres, a superuser: allowed for a profiling run only.
allow_owner = true
[log]
format = "json"
error_log = "$work/error.log"
[debug]
# valgrind runs the worker inside its own process: the worker's seccomp
# filter and Landlock rules would confine valgrind too.
confine = false
TOML
cfg=(--config "$work/sandgnat.toml")
env -u DATABASE_URL "$bin" migrate "${cfg[@]}" >/dev/null
key=$(env -u DATABASE_URL "$bin" keys create "${cfg[@]}" --name order --role submitter)
env -u DATABASE_URL -u REDIS_URL valgrind --tool=callgrind --demangle=no --dump-instr=no \
  --compress-strings=no --compress-pos=no --dump-after='*drop_boot_pages*' \
  --trace-children=yes --trace-children-skip-by-arg='*front-end*,*recorder*,*runner*' \
  --callgrind-out-file="$work/callgrind.%p" "$bin" serve "${cfg[@]}" --no-migrate > "$work/out.log" 2>&1 &
master=$!
stop() { kill -TERM "$master" 2>/dev/null && wait "$master" 2>/dev/null || true; }
trap 'stop; psql "$admin_url" -qtAc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null' EXIT
sock=(--unix-socket "$work/workers.sock")
for _ in $(seq 600); do curl -sf "${sock[@]}" http://x/readyz >/dev/null 2>&1 && break; sleep 0.5; done
curl -sf "${sock[@]}" http://x/readyz >/dev/null || { echo "the appliance did not become ready; see $work/out.log" >&2; exit 1; }
# valgrind runs the worker under its own name, with the binary's path
# and role among its arguments.
worker=$(pgrep -f "$bin worker" | head -1) || { echo "no worker is running; see $work/out.log" >&2; exit 1; }
# Part 2 (after the boot part that --dump-after closed): the probes.
curl -sf "${sock[@]}" http://x/healthz >/dev/null
curl -sf "http://127.0.0.1:$metrics/metrics" >/dev/null
for _ in $(seq 100); do curl -skf "https://127.0.0.1:$tls/healthz" >/dev/null && break; sleep 0.2; done
callgrind_control -d "$worker" >/dev/null 2>&1
# Part 3: idle, long enough for key refreshes (2 s) and queue upkeep (10 s).
sleep 25
callgrind_control -d "$worker" >/dev/null 2>&1
# Part 4, written at exit: submissions and reads.
api=(-sk -H "X-API-Key: $key")
head -c 4096 /dev/urandom > "$work/4k.bin"
head -c 1048576 /dev/urandom > "$work/1m.bin"
printf '%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' > "$work/eicar.com"
submit() { curl "${api[@]}" "$@" "https://127.0.0.1:$tls/v1/submit"; echo; }
for f in 4k.bin eicar.com 4k.bin 1m.bin; do submit -H "X-Filename: $f" --data-binary "@$work/$f" >/dev/null; done
id=$(submit -F "file=@$work/eicar.com" -F tags=a,b -F tlp=amber | python3 -c 'import json, sys; print(json.load(sys.stdin)["analysis_id"])')
submit -F "file=@$work/1m.bin" >/dev/null
curl "${api[@]}" "https://127.0.0.1:$tls/v1/analyses/$id" >/dev/null
submit -H 'Content-Type: multipart/form-data; boundary=zz' --data-binary $'--zz\r\nbroken' >/dev/null
submit --data-binary '' >/dev/null
curl -sk "https://127.0.0.1:$tls/v1/analyses/$id" >/dev/null
sleep 2
stop
functions() {   # the binary's functions a callgrind part has cost in
  awk -v obj="$bin" '/^ob=/ {ours = (substr($0, 4) == obj)} /^fn=/ && ours {print substr($0, 4)}' "$1"
}
out=$repo/packaging/link/hot-functions.order
{ functions "$work/callgrind.$worker.3"; functions "$work/callgrind.$worker.2"; functions "$work/callgrind.$worker"; } |
  awk '!seen[$0]++' > "$out.tmp"
mv "$out.tmp" "$out"
echo "$(wc -l < "$out") functions in $out (profile files in $work)"
