#!/usr/bin/env bash
# TAXII 2.1 side by side: the OASIS client (taxii2-client) pages through a
# collection served by SandGNAT and by the OASIS reference server
# medallion (its memory backend, holding exactly the objects SandGNAT
# served). Both over plain HTTP on loopback (SandGNAT through its front
# end's plain port; medallion's own server), then SandGNAT through TLS.
# Alternating rounds; one JSON line per pull. ANALYSES analyses make about
# 1.6 objects each in the `analyses` collection (a file and a
# malware-analysis for each one not TLP:RED): 62500 make 100,000.
# medallion's memory backend matches each object to its manifest entry by
# a linear search, so its time grows with the square of the collection: a
# pull of it is given MEDALLION_TIMEOUT seconds (default 600) and reported
# as unfinished past that.
# Usage: bash benches/taxii.sh [ANALYSES] [ROUNDS] [PER_REQUEST]   (default 62500 2 1000)
source "$(dirname "$0")/lib.sh"
n=${1:-62500}
rounds=${2:-2}
per=${3:-1000}
py=/var/tmp/sandgnat-bench-py
[ -x "$py/bin/medallion" ] || { python3 -m venv "$py" && "$py/bin/pip" install -q medallion taxii2-client; }
build_release
mkdir -p "$BENCH_DIR"
[ -d "$BENCH_DIR/rules" ] || python3 "$shared/bench/gen_rules.py" "$BENCH_DIR" >&2
out=$repo/benches/results/taxii-$(date +%F).jsonl
mkdir -p "$repo/benches/results"
emit() { echo "$1" | tee -a "$out"; }

start_sandgnat 2 $'[intake]\nstatic_analysis_enabled = false'
medallion_pid=""
cleanup() { [ -n "$medallion_pid" ] && kill "$medallion_pid" 2>/dev/null; stop_sandgnat; }
trap cleanup EXIT
reader=$(env -u DATABASE_URL "$bin" keys create --config "$run/sandgnat.toml" --name bench-reader --role reader)
echo "filling $n analyses" >&2
fill_analyses "$bench_db_url" "$n"

data=$BENCH_DIR/medallion-data.json
"$py/bin/python" "$repo/benches/taxii_pull.py" "http://127.0.0.1:$plain_port/taxii2/" taxii "$reader" analyses "$per" --dump "$data" >&2
mport=$(free_port)
sed -i "s#http://127.0.0.1/api1/#http://127.0.0.1:$mport/api1/#g" "$data"
cat > "$BENCH_DIR/medallion.json" <<JSON
{"backend": {"module": "medallion.backends.memory_backend", "module_class": "MemoryBackend", "filename": "$data"},
 "users": {"bench": "bench"}, "taxii": {"max_page_size": $per}}
JSON
"$py/bin/medallion" --port "$mport" "$BENCH_DIR/medallion.json" > "$BENCH_DIR/medallion.log" 2>&1 &
medallion_pid=$!
for _ in $(seq 300); do curl -sf -u bench:bench -H 'Accept: application/taxii+json;version=2.1' "http://127.0.0.1:$mport/taxii2/" >/dev/null && break; sleep 0.2; done

for r in $(seq "$rounds"); do
  s=$("$py/bin/python" "$repo/benches/taxii_pull.py" "http://127.0.0.1:$plain_port/taxii2/" taxii "$reader" analyses "$per")
  emit "{\"analyses\":$n,\"round\":$r,\"server\":\"sandgnat, plain HTTP via front end\",\"pull\":$s}"
  m=$(timeout "${MEDALLION_TIMEOUT:-600}" "$py/bin/python" "$repo/benches/taxii_pull.py" "http://127.0.0.1:$mport/taxii2/" bench bench "SandGNAT analyses" "$per" ||
      echo "{\"unfinished_after_s\":${MEDALLION_TIMEOUT:-600}}")
  emit "{\"analyses\":$n,\"round\":$r,\"server\":\"medallion memory backend, plain HTTP\",\"pull\":$m}"
  t=$(REQUESTS_CA_BUNDLE="$run/certs/self-signed.pem" "$py/bin/python" "$repo/benches/taxii_pull.py" "https://127.0.0.1:$tls_port/taxii2/" taxii "$reader" analyses "$per")
  emit "{\"analyses\":$n,\"round\":$r,\"server\":\"sandgnat, TLS via front end\",\"pull\":$t}"
done
