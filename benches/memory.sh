#!/usr/bin/env bash
# Memory of the whole appliance, binary against binary: PSS and USS of
# every process of the tree (master, front end, workers, recorder, metrics,
# runners), per process and summed over the node. PSS sums correctly over
# processes (a page shared by n processes counts 1/n in each), so the
# node's PSS is what the appliance costs in mapped memory; USS (pages no
# other process maps) summed is what stopping it would free at least.
# VmRSS counts every shared page in every process and is only listed.
#
# Each binary is started in turn the same way (benches/lib.sh's
# start_sandgnat, 4 workers, the default runners), rounds alternating the
# binaries, and read at two moments: idle (2 s after every process is
# ready) and after a load on the workers' Unix socket (HEALTHZ requests
# of GET /healthz, then SUBMITS unique 4 KiB submissions, both over 8
# keep-alive connections, then the job queue drained). Before each start
# the binary's own pages are evicted from the page cache (it is a private
# copy, mapped by nobody), so `bin_cache_mib` is what that start read of
# it into memory, mapped or not: of its loaded segments, and of the rest
# (debug sections the kernel read ahead, never mapped).
#
# usage: benches/memory.sh [ROUNDS=2] LABEL=BINARY...
#   HEALTHZ=4000 SUBMITS=400: the load
# One JSON line per binary, round and moment on stdout; then one summary
# line per binary and moment (medians over rounds).
source "$(dirname "$0")/lib.sh"
rounds=2
if [[ ${1:-} =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
[ $# -ge 1 ] || { echo "usage: benches/memory.sh [ROUNDS] LABEL=BINARY..." >&2; exit 2; }
healthz=${HEALTHZ:-4000}
submits=${SUBMITS:-400}
trap stop_sandgnat EXIT
[ -d "$bench_rules" ] || python3 "$shared/bench/gen_rules.py" "$BENCH_DIR" >&2

# Every process under the master, the master included, with its role
# (the subcommand the master started it with) and its smaps_rollup.
measure() {   # measure LABEL ROUND MOMENT BINARY EXTRA_JSON
  python3 - "$sandgnat_pid" "$@" <<'PY'
import ctypes, json, os, subprocess, sys
root, label, rnd, moment, binary, extra = int(sys.argv[1]), *sys.argv[2:7]
children = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
tree, todo = [], [root]
while todo:
    p = todo.pop()
    tree.append(p)
    todo.extend(children.get(p, []))
def bin_cache(path):
    """The binary's pages in the page cache (mincore over a fresh mapping):
    those of its loaded segments, and the rest (debug sections read ahead)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    addr = libc.mmap(None, size, 1, 1, fd, 0)   # PROT_READ, MAP_SHARED
    os.close(fd)
    pages = (size + 4095) // 4096
    vec = (ctypes.c_ubyte * pages)()
    if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
        return None
    libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
    loaded = set()
    for line in subprocess.run(["readelf", "-lW", path], capture_output=True, text=True).stdout.splitlines():
        f = line.split()
        if f[:1] == ["LOAD"]:
            off, filesz = int(f[1], 16), int(f[4], 16)
            loaded.update(range(off // 4096, (off + filesz + 4095) // 4096))
    cached = [i for i in range(pages) if vec[i] & 1]
    inside = sum(1 for i in cached if i in loaded)
    return {"loaded": round(inside * 4096 / 2**20, 2), "other": round((len(cached) - inside) * 4096 / 2**20, 2)}

fields = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Private_Clean", "Private_Dirty")
procs = []
for p in sorted(tree):
    try:
        argv = open(f"/proc/{p}/cmdline").read().split("\0")
        kib = {}
        for line in open(f"/proc/{p}/smaps_rollup"):
            k, _, rest = line.partition(":")
            if k in fields:
                kib[k] = int(rest.split()[0])
    except OSError:
        continue
    role = "master" if p == root else (argv[1] if len(argv) > 1 else "?")
    mib = lambda k: round(kib.get(k, 0) / 1024, 2)
    procs.append({"role": role, "pid": p, "rss_mib": mib("Rss"), "pss_mib": mib("Pss"),
                  "uss_mib": round((kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)) / 1024, 2),
                  "pss_anon_mib": mib("Pss_Anon"), "pss_file_mib": mib("Pss_File"),
                  "pss_shmem_mib": mib("Pss_Shmem")})
cached = bin_cache(binary)
total = lambda k, ps=procs: round(sum(x[k] for x in ps), 2)
workers = [x for x in procs if x["role"] == "worker"]
print(json.dumps({"bench": "memory", "variant": label, "round": int(rnd), "moment": moment,
    "binary": binary, "bin_bytes": os.path.getsize(binary),
    "bin_cache_mib": cached,
    "node": {"processes": len(procs), "pss_mib": total("pss_mib"), "uss_mib": total("uss_mib"),
             "rss_mib": total("rss_mib"), "pss_anon_mib": total("pss_anon_mib"),
             "pss_file_mib": total("pss_file_mib"), "pss_shmem_mib": total("pss_shmem_mib")},
    "workers": {"pss_mib": [x["pss_mib"] for x in workers], "uss_mib": [x["uss_mib"] for x in workers],
                "rss_mib": [x["rss_mib"] for x in workers]},
    **json.loads(extra), "processes": procs}))
PY
}

# HEALTHZ GETs, then SUBMITS POSTs of 4 KiB that differ in their first
# bytes (each one hashed, scanned, stored, recorded, queued), 8 threads
# each with its own keep-alive connection. Prints {"load": {...}}.
load() {
  python3 - "$run/workers.sock" "$key" "$healthz" "$submits" <<'PY'
import http.client, json, os, socket, sys, threading
sock, key, healthz, submits = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
class Conn(http.client.HTTPConnection):
    def __init__(self):
        super().__init__("localhost", timeout=60)
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(60)
        self.sock.connect(sock)
codes, lock, threads = {}, threading.Lock(), 8
pad = os.urandom(4096 - 16)
def run(n, post, t):
    c = Conn()
    for i in range(n):
        if post:
            c.request("POST", "/v1/submit", body=b"%08x%08x" % (t, i) + pad,
                      headers={"X-API-Key": key, "X-Filename": "m.bin",
                               "Content-Type": "application/octet-stream"})
        else:
            c.request("GET", "/healthz")
        r = c.getresponse(); r.read()
        with lock:
            codes[r.status] = codes.get(r.status, 0) + 1
for total, post in ((healthz, False), (submits, True)):
    ts = [threading.Thread(target=run, args=(total // threads, post, t)) for t in range(threads)]
    [t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"load": {"healthz": healthz, "submits_4k_unique": submits,
                           "status": {str(k): v for k, v in sorted(codes.items())}}}))
PY
}

# Jobs the appliance's own runners take (static analyses of the
# submissions; detonations wait for an external sandbox), due and not yet
# finished: the after-load moment waits for none, up to 120 s.
drain() {
  local left
  for _ in $(seq 600); do
    left=$(psql "$bench_db_url" -qtAc "SELECT count(*) FROM jobs WHERE state IN ('available', 'running') AND run_at <= now() AND queue IN ('static', 'notify')")
    [ "$left" = 0 ] && break
    sleep 0.2
  done
  echo "$left"
}

lines=()
for r in $(seq "$rounds"); do
  for spec in "$@"; do
    label=${spec%%=*} bin=${spec#*=}
    [ -x "$bin" ] || { echo "$bin is not an executable" >&2; exit 2; }
    python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fdatasync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$bin"
    start_sandgnat 4
    sleep 2   # boot-time allocations settle, the first heartbeats pass
    lines+=("$(measure "$label" "$r" idle "$bin" '{}')"); echo "${lines[-1]}"
    stats=$(load)
    left=$(drain)
    sleep 2
    lines+=("$(measure "$label" "$r" after_load "$bin" "$(python3 -c 'import json, sys; d = json.loads(sys.argv[1]); d["load"]["jobs_left"] = int(sys.argv[2]); print(json.dumps(d))' "$stats" "$left")")")
    echo "${lines[-1]}"
    stop_sandgnat
  done
done
python3 - "${lines[@]}" <<'PY'
import json, statistics, sys
runs = [json.loads(a) for a in sys.argv[1:]]
med = lambda xs: round(statistics.median(xs), 2)
for variant in dict.fromkeys(r["variant"] for r in runs):
    for moment in ("idle", "after_load"):
        rs = [r for r in runs if r["variant"] == variant and r["moment"] == moment]
        by_role = {}
        for r in rs:
            for p in r["processes"]:
                by_role.setdefault(p["role"], []).append(p)
        print(json.dumps({"bench": "memory_summary", "variant": variant, "moment": moment, "rounds": len(rs),
            "node_pss_mib": [r["node"]["pss_mib"] for r in rs],
            "node_uss_mib": [r["node"]["uss_mib"] for r in rs],
            "node_rss_mib": [r["node"]["rss_mib"] for r in rs],
            "bin_cache_loaded_mib": [r["bin_cache_mib"]["loaded"] for r in rs],
            "bin_cache_other_mib": [r["bin_cache_mib"]["other"] for r in rs],
            "median_by_role": {role: {"n": len(ps) // len(rs), "pss_mib": med([p["pss_mib"] for p in ps]),
                                      "uss_mib": med([p["uss_mib"] for p in ps]),
                                      "rss_mib": med([p["rss_mib"] for p in ps])}
                               for role, ps in by_role.items()}}))
PY
