#!/usr/bin/env bash
# Issue 3, the TLS front end, side by side in one run (loopback only).
#  1. GET /healthz over TLS with keep-alive, 64 connections, wrk (2
#     threads, ../shared/bench/load.sh) on both sides: SandGNAT (pingora
#     front end -> WORKERS workers) against nginx (TLS) -> gunicorn (4 sync
#     workers). Alternating rounds; the ratio of each round and the median.
#  2. The front end's price: the same WORKERS workers reached on their Unix
#     socket directly, through the front end's plain port, through its TLS
#     port, and, as a yardstick, through nginx (TLS, keep-alive upstream
#     pool, the same forwarding headers) in front of the same socket; one
#     load generator (oha, same threads, 64 connections) for all four, in
#     alternating rounds. overhead = 1 - rps(proxy) / rps(direct). Also
#     the CPU time each proxy and the workers spend per request (from
#     /proc, so less sensitive to the machine's noise), and the latency
#     each proxy adds at one connection (p50 through it minus p50 direct).
#  3. A 128 MiB upload through TLS (HTTP/1.1, curl): to a worker route that
#     reads and discards the body (/__debug/echo-headers, fault injection
#     on), which measures the front end's forwarding; and to POST
#     /v1/submit, where the worker also hashes, scans and stores it. For
#     each: the front end's RSS before and its peak during the upload
#     (VmHWM, reset first) and the throughput curl saw. The discarding
#     upload is also sent over HTTP/2 (what curl picks by ALPN), and, for
#     reference, through nginx to the same route.
# On a 2-core machine the load generator, the front end and the workers
# share the cores: absolute figures drift, the ratios are what to read.
#
# usage: benches/frontend.sh [SECONDS=10] [WORKERS=4] [ROUNDS=3]
source "$(dirname "$0")/lib.sh"
secs=${1:-10}; workers=${2:-4}; rounds=${3:-3}; conns=64
need_tools
start_sandgnat "$workers" $'[debug]\nfault_injection = true\n[intake]\nmax_sample_bytes = 268435456'
trap stop_sandgnat EXIT
fe=$(front_end_pid)
wpids=$(worker_pids)
# nginx in front of the same workers' socket, as a yardstick for the price
# of a proxy hop on this machine.
ngx_port=$(free_port)
mkdir -p "$run/nginx"
cat > "$run/nginx/nginx.conf" <<NGINX
worker_processes auto;
user nobody nogroup;
pid $run/nginx/nginx.pid;
error_log $run/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $run/nginx/body;
  proxy_temp_path $run/nginx/proxy;
  fastcgi_temp_path $run/nginx/fastcgi;
  uwsgi_temp_path $run/nginx/uwsgi;
  scgi_temp_path $run/nginx/scgi;
  upstream workers { server unix:$run/workers.sock; keepalive 64; }
  server {
    listen 127.0.0.1:$ngx_port ssl;
    ssl_certificate $run/certs/self-signed.pem;
    ssl_certificate_key $run/certs/self-signed.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    client_max_body_size 256m;
    location / {
      proxy_pass http://workers;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Request-Id \$request_id;
      proxy_read_timeout 150s;
    }
  }
}
NGINX
nginx -c "$run/nginx/nginx.conf"
stop_all() { [ -f "$run/nginx/nginx.pid" ] && kill "$(cat "$run/nginx/nginx.pid")" 2>/dev/null; stop_sandgnat; }
trap stop_all EXIT
for _ in $(seq 50); do curl -skf "https://127.0.0.1:$ngx_port/healthz" >/dev/null && break; sleep 0.1; done
ngx_pids=$(pgrep -P "$(cat "$run/nginx/nginx.pid")")
ngx_url=https://127.0.0.1:$ngx_port
tls_url=https://127.0.0.1:$tls_port
plain_url=http://127.0.0.1:$plain_port
cpu_ticks() { local t=0 p; for p in "$@"; do [ "$p" = none ] && continue; t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
tick_us=$((1000000 / $(getconf CLK_TCK)))
echo "{\"bench\":\"frontend_setup\",\"workers\":$workers,\"connections\":$conns,\"seconds\":$secs,\"rounds\":$rounds,\"cores\":$(nproc),\"loadavg_start\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}"

# Warm-up: TLS sessions, connection pools, page cache.
bash "$shared/bench/load.sh" "$tls_url/healthz" "" "" "$conns" 2 >/dev/null
bash "$shared/bench/load.sh" https://127.0.0.1:18443/healthz "" "" "$conns" 2 >/dev/null

# 1. Against nginx -> gunicorn, wrk on both sides.
vs=()
for _ in $(seq "$rounds"); do
  ours=$(bash "$shared/bench/load.sh" "$tls_url/healthz" "" "" "$conns" "$secs")
  theirs=$(bash "$shared/bench/load.sh" https://127.0.0.1:18443/healthz "" "" "$conns" "$secs")
  vs+=("{\"sandgnat_tls\":$ours,\"nginx_gunicorn\":$theirs}")
done

# 2. The front end's overhead against the workers' socket, oha on all three.
# oha_cpu NAME PROXY_PIDS ARGS...: one oha run, with the CPU time per
# request of the proxy's processes and of the workers added to its line.
oha_cpu() {
  local name=$1 proxy=$2; shift 2
  local f0 w0 out n
  f0=$(cpu_ticks $proxy); w0=$(cpu_ticks $wpids)
  out=$(oha_json "$@")
  n=$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(max(d["ok"]+d["non_2xx"],1))')
  echo "$out" | python3 -c "import json,sys; d=json.load(sys.stdin); d.update(side='$name',
    proxy_cpu_us_per_req=round($(( $(cpu_ticks $proxy) - f0 ))*$tick_us/$n, 1),
    workers_cpu_us_per_req=round($(( $(cpu_ticks $wpids) - w0 ))*$tick_us/$n, 1)); print(json.dumps(d))"
}
direct=(-c "$conns" --unix-socket "$run/workers.sock" http://x/healthz)
plain=(-c "$conns" "$plain_url/healthz")
tls=(-c "$conns" --insecure --http-version 1.1 "$tls_url/healthz")
nginx_tls=(-c "$conns" --insecure --http-version 1.1 "$ngx_url/healthz")
oha_json -z 2s "${nginx_tls[@]}" >/dev/null   # warm-up
over=()
for _ in $(seq "$rounds"); do
  a=$(oha_cpu direct none -z "${secs}s" "${direct[@]}")
  b=$(oha_cpu plain "$fe" -z "${secs}s" "${plain[@]}")
  c=$(oha_cpu tls "$fe" -z "${secs}s" "${tls[@]}")
  d=$(oha_cpu nginx_tls "$ngx_pids" -z "${secs}s" "${nginx_tls[@]}")
  over+=("{\"direct\":$a,\"plain\":$b,\"tls\":$c,\"nginx_tls\":$d}")
done
# Added latency, one connection, no queueing.
lat=()
for spec in direct plain tls nginx_tls; do
  declare -n args=$spec
  lat+=("$(oha_json -z 3s -c 1 "${args[@]:2}")")
  unset -n args
done

# 3. 128 MiB through TLS.
big=$BENCH_DIR/samples/128m-bench.bin
mkdir -p "$BENCH_DIR/samples"
[ -f "$big" ] || head -c $((128 << 20)) /dev/urandom > "$big"
size=$(stat -c %s "$big")
# upload NAME URL HTTP_VERSION_FLAG [curl args]: one JSON line. The proxy
# watched is the front end, or the processes in $watch.
upload() {
  local name=$1 url=$2 version=$3; shift 3
  local pids=${watch:-$fe} before=0 peak=0 p out
  for p in $pids; do before=$((before + $(rss_kib "$p"))); reset_hwm "$p"; done
  out=$(curl -sk "$version" -X POST -T "$big" -H 'Expect:' -H 'Content-Type: application/octet-stream' "$@" \
    -o "$run/upload-$name.json" -w '%{http_code} %{speed_upload} %{time_total} %{http_version}' "$url")
  for p in $pids; do peak=$((peak + $(hwm_kib "$p"))); done
  set -- $out
  python3 - "$name" "$size" "$1" "$2" "$3" "$4" "$before" "$peak" "$run/upload-$name.json" <<'PY2'
import json, sys
name, size, code, speed, secs, version, before, peak, answer = sys.argv[1:]
print(json.dumps({"upload": name, "bytes": int(size), "status": int(code), "http_version": version,
  "mb_s": round(float(speed) / 1e6, 1), "seconds": float(secs),
  "proxy_rss_before_mib": round(int(before) / 1024, 1), "proxy_rss_peak_mib": round(int(peak) / 1024, 1),
  "proxy_rss_growth_mib": round((int(peak) - int(before)) / 1024, 1),
  "answer": open(answer).read(300)}))
PY2
}
ups=()
for _ in 1 2 3; do
  ups+=("$(upload discard "$tls_url/__debug/echo-headers" --http1.1)")
  ups+=("$(upload discard_h2 "$tls_url/__debug/echo-headers" --http2)")
  ups+=("$(watch=$ngx_pids upload nginx_discard "$ngx_url/__debug/echo-headers" --http1.1)")
done
ups+=("$(upload submit "$tls_url/v1/submit" --http1.1 -H "X-API-Key: $key" -H 'X-Filename: 128m-bench.bin')")

python3 - "$(printf '%s\n' "${vs[@]}")" "$(printf '%s\n' "${over[@]}")" "$(printf '%s\n' "${lat[@]}")" \
  "$(printf '%s\n' "${ups[@]}")" "$workers" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, statistics, sys
vs = [json.loads(l) for l in sys.argv[1].splitlines()]
over = [json.loads(l) for l in sys.argv[2].splitlines()]
lat = dict(zip(("direct", "plain", "tls", "nginx_tls"), (json.loads(l) for l in sys.argv[3].splitlines())))
ups = [json.loads(l) for l in sys.argv[4].splitlines()]
workers, load_end = int(sys.argv[5]), sys.argv[6]
med = statistics.median
for i, r in enumerate(vs, 1):
    o, t = r["sandgnat_tls"], r["nginx_gunicorn"]
    r.update(bench="frontend_vs_nginx", round=i, rps_ratio=round(o["rps"] / t["rps"], 2),
             p99_ratio=round(o["p99_ms"] / t["p99_ms"], 3))
    print(json.dumps(r))
for i, r in enumerate(over, 1):
    d = r["direct"]["rps"]
    r.update(bench="frontend_overhead", round=i, overhead_plain=round(1 - r["plain"]["rps"] / d, 3),
             overhead_tls=round(1 - r["tls"]["rps"] / d, 3),
             overhead_nginx_tls=round(1 - r["nginx_tls"]["rps"] / d, 3))
    print(json.dumps(r))
print(json.dumps({"bench": "frontend_latency_1conn", **lat,
    "added_p50_us_plain": round((lat["plain"]["p50_ms"] - lat["direct"]["p50_ms"]) * 1000),
    "added_p50_us_tls": round((lat["tls"]["p50_ms"] - lat["direct"]["p50_ms"]) * 1000),
    "added_p50_us_nginx_tls": round((lat["nginx_tls"]["p50_ms"] - lat["direct"]["p50_ms"]) * 1000)}))
for u in ups:
    print(json.dumps({"bench": "frontend_upload_128m", **u}))
by = lambda name: [u for u in ups if u["upload"] == name]
disc = by("discard")
print(json.dumps({"bench": "frontend_summary", "workers": workers, "connections": 64,
    "median_rps_ratio_vs_nginx_gunicorn": med(r["rps_ratio"] for r in vs),
    "median_p99_ratio_vs_nginx_gunicorn": med(r["p99_ratio"] for r in vs),
    "median_overhead_tls": med(r["overhead_tls"] for r in over),
    "median_overhead_plain": med(r["overhead_plain"] for r in over),
    "median_overhead_nginx_tls": med(r["overhead_nginx_tls"] for r in over),
    "median_front_end_cpu_us_per_req_tls": med(r["tls"]["proxy_cpu_us_per_req"] for r in over),
    "median_nginx_cpu_us_per_req_tls": med(r["nginx_tls"]["proxy_cpu_us_per_req"] for r in over),
    "median_workers_cpu_us_per_req_direct": med(r["direct"]["workers_cpu_us_per_req"] for r in over),
    "median_workers_cpu_us_per_req_tls": med(r["tls"]["workers_cpu_us_per_req"] for r in over),
    "upload_discard_median_mb_s": med(u["mb_s"] for u in disc),
    "upload_discard_max_rss_growth_mib": max(u["proxy_rss_growth_mib"] for u in disc),
    "upload_discard_h2_median_mb_s": med(u["mb_s"] for u in by("discard_h2")),
    "upload_discard_h2_max_rss_growth_mib": max(u["proxy_rss_growth_mib"] for u in by("discard_h2")),
    "upload_nginx_discard_median_mb_s": med(u["mb_s"] for u in by("nginx_discard")),
    "upload_submit_mb_s": by("submit")[0]["mb_s"],
    "upload_submit_rss_growth_mib": by("submit")[0]["proxy_rss_growth_mib"],
    "loadavg_end": load_end}))
PY
