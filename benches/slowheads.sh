#!/usr/bin/env bash
# Issue 17: the front end's memory under slow clients. CONNS connections
# (2000 by default) each start a request head and never finish it, over
# the plain port and over TLS, in two shapes:
#   trickle: a request line and a few fields, then one byte a second;
#   big:     a request line and 32 KiB of fields at once, then one byte a
#            second (what a head in progress holds in the front end).
# Each shape gets a front end of its own (a fresh appliance), so what the
# allocator kept from one shape is not in the next one's figures.
# For each: the front end's PSS (/proc/PID/smaps_rollup) before, with all
# connections held (all connected and their first bytes sent, plus 2 s),
# and after they are closed; the difference per connection; how many of
# them the front end evicted to keep unfinished heads within
# proxy.head_budget_bytes (null for a binary without the budget); the
# load average at the measurement. The per-IP connection cap is lifted for
# the run (every connection comes from 127.0.0.1); the total cap and the
# head budget stay at their defaults (10000, 32 MiB).
#
# usage: benches/slowheads.sh [CONNS=2000]
# (SANDGNAT_BIN=path runs that binary instead of building a release one.)
source "$(dirname "$0")/lib.sh"
conns=${1:-2000}
build_release
[ -d "$BENCH_DIR/rules" ] || python3 "$shared/bench/gen_rules.py" "$BENCH_DIR" >&2
export SANDGNAT_PROXY__MAX_CONNECTIONS_PER_IP=0
trap stop_sandgnat EXIT
pss_kib() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
evicted() { curl -s "http://127.0.0.1:$metrics_port/metrics" | awk '/^sandgnat_frontend_heads_evicted_total / {print $2}'; }
mkdir -p "$repo/benches/results"
out=$repo/benches/results/slowheads-$(date -u +%Y%m%dT%H%M%SZ).jsonl

for port_kind in plain tls; do
  for shape in trickle big; do
    start_sandgnat 1
    port=$plain_port; [ "$port_kind" = tls ] && port=$tls_port
    fe=$(front_end_pid)
    before=$(pss_kib "$fe")
    evicted_before=$(evicted)
    fifo=$run/slow.ready; rm -f "$fifo"; mkfifo "$fifo"
    python3 - "$port" "$port_kind" "$shape" "$conns" "$fifo" <<'PY' &
import asyncio, ssl, sys
port, kind, shape, conns, fifo = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
ctx = None
if kind == "tls":
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
if shape == "big":
    head += b"".join(b"X-F%03d: %s\r\n" % (i, b"v" * 1000) for i in range(32))
head += b"X-Slow: "
stop = asyncio.Event()
async def one(ready):
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        w.write(head)
        await w.drain()
    except OSError as e:
        ready.append(repr(e)); return
    ready.append(None)
    try:
        while not stop.is_set():
            await asyncio.sleep(1)
            w.write(b"a"); await w.drain()
    except OSError:
        pass
    w.close()
async def main():
    ready = []
    tasks = []
    for _ in range(conns):
        tasks.append(asyncio.create_task(one(ready)))
        await asyncio.sleep(0)
    while len(ready) < conns:
        await asyncio.sleep(0.05)
    errors = [e for e in ready if e]
    await asyncio.sleep(2)
    with open(fifo, "w") as f:
        f.write(f"{conns - len(errors)} {len(errors)}\n")
    # Held until the measurement is taken (the script writes "stop").
    await asyncio.get_running_loop().run_in_executor(None, lambda: open(fifo + ".stop").read())
    stop.set()
    for t in tasks: t.cancel()
asyncio.run(main())
PY
    client=$!
    mkfifo "$fifo.stop"
    read -r held failed < "$fifo"
    during=$(pss_kib "$fe")
    rss_during=$(rss_kib "$fe")
    evicted_during=$(evicted)
    load=$(cut -d' ' -f1 /proc/loadavg)
    echo stop > "$fifo.stop"
    wait "$client" || true
    sleep 3
    after=$(pss_kib "$fe")
    rm -f "$fifo" "$fifo.stop"
    line=$(python3 -c 'import json,sys
k,s,n,f,b,d,a,r,e0,e1,load,binary=sys.argv[1:]
n,f,b,d,a,r=int(n),int(f),int(b),int(d),int(a),int(r)
ev=int(e1)-int(e0) if e0 and e1 else None
print(json.dumps({"binary":binary,"listener":k,"shape":s,"held":n,"failed":f,"evicted":ev,"pss_before_kib":b,"pss_held_kib":d,
  "rss_held_kib":r,"pss_after_kib":a,"kib_per_conn":round((d-b)/max(n,1),1),"load":float(load)}))' \
      "$port_kind" "$shape" "$held" "$failed" "$before" "$during" "$after" "$rss_during" \
      "$evicted_before" "$evicted_during" "$load" "$(basename "$bin")")
    echo "$line" | tee -a "$out"
    stop_sandgnat
  done
done
echo "raw: $out" >&2
