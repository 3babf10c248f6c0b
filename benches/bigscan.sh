#!/usr/bin/env bash
# Issue 18: one large sample alone on the machine, the time from its last
# byte to the 202. A client sends POST /v1/submit through the TLS front
# end (HTTP/1.1), a different 128 MiB sample every request (fresh random
# bytes at its head, so nothing is deduplicated), waits for the answer,
# then sends the next: nothing else runs. Each binary (or setting) takes
# its turn in every round, so a noisy machine costs each the same.
#
#   BENCH_RULES=signature-base bash benches/bigscan.sh ROUNDS SAMPLES RUN...
#
# A RUN is `label=BINARY` or `label=BINARY:ENV=VALUE[,ENV=VALUE]`, e.g.
#   before=/tmp/sandgnat-main after=/tmp/sandgnat:SANDGNAT_YARA__SCAN_PARTS=1
# Raw lines: benches/results/bigscan-<UTC>.jsonl; a median per label last.
source "$(dirname "$0")/lib.sh"
rounds=${1:?rounds}
per=${2:?samples per turn}
shift 2
size_mib=${BIG_MIB:-128}
big=$BENCH_DIR/samples/big-${size_mib}m.bin
[ -f "$big" ] || head -c $((size_mib << 20)) /dev/urandom > "$big"
out=$here/results/bigscan-$(date -u +%Y%m%dT%H%M%SZ).jsonl
trap stop_sandgnat EXIT
for r in $(seq "$rounds"); do
  for spec in "$@"; do
    label=${spec%%=*}
    rest=${spec#*=}
    bin=${rest%%:*}
    envs=()
    [[ "$rest" == *:* ]] && IFS=, read -r -a envs <<<"${rest#*:}"
    for e in "${envs[@]}"; do export "${e?}"; done
    start_sandgnat 2 $'[intake]\nmax_sample_bytes = 268435456\n[queue]\nrunners = 0'
    for e in "${envs[@]}"; do unset "${e%%=*}"; done
    python3 - "$tls_port" "$key" "$big" "$per" "$label" "$r" <<'PY' | tee -a "$out"
import json, os, socket, ssl, sys, time
port, key, path, n, label, rnd = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
data = bytearray(open(path, "rb").read())
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
for i in range(n):
    data[:32] = os.urandom(32)
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    head = (f"POST /v1/submit HTTP/1.1\r\nHost: bench\r\nX-API-Key: {key}\r\n"
            f"X-Filename: big-{rnd}-{i}.bin\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    sock.sendall(head.encode())
    view = memoryview(data)
    t0 = time.perf_counter()
    for off in range(0, len(data), 1 << 20):
        sock.sendall(view[off:off + (1 << 20)])
    last = time.perf_counter()
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    done = time.perf_counter()
    sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer else 0
    print(json.dumps({"bench": "bigscan", "label": label, "round": rnd, "mib": len(data) >> 20,
                      "status": status, "send_s": round(last - t0, 4),
                      "last_byte_to_answer_s": round(done - last, 4)}), flush=True)
PY
    stop_sandgnat
  done
done
echo "raw: $out" >&2
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
labels = list(dict.fromkeys(r["label"] for r in rows))
first = None
for label in labels:
    ok = [r["last_byte_to_answer_s"] for r in rows if r["label"] == label and r["status"] == 202]
    bad = sum(1 for r in rows if r["label"] == label and r["status"] != 202)
    med = statistics.median(ok) if ok else float("nan")
    first = first or med
    print(f"| {label} | {len(ok)} | {med:.3f} s | {min(ok):.3f}-{max(ok):.3f} | {med / first:.2f} | {bad} not 202 |")
PY
