#!/usr/bin/env bash
# Issue 17: fuzz the parsers of hostile input (src/fuzz.rs: the HTTP/1 head
# guard, the multipart reader, the settings loader, the static analysis of
# ELF / PE / Mach-O) with cargo-fuzz (libFuzzer), each for a bounded time.
# Not in CI. Prints one JSON line per target (executions, corpus, crashes)
# and appends it to benches/results/fuzz-<time>.jsonl; what a target finds
# is left in $FUZZ_DIR/artifacts/<target>/ (turn each into a regression
# test in the main crate that calls the same sandgnat::fuzz function).
#
# usage: benches/fuzz.sh [SECONDS=300] [TARGET...]
#
# A target that dies of SIGSEGV with no artifact has most likely overflowed
# its stack (libFuzzer cannot report that); run it under gdb to see where
# and to dump the input (frame fuzzer::Fuzzer::ExecuteCallback, Data/Size):
#   gdb -ex run -ex bt --args $FUZZ_DIR/target/x86_64-unknown-linux-gnu/release/TARGET \
#     $FUZZ_DIR/corpus/TARGET fuzz/seeds/TARGET
#
# Needs `cargo install cargo-fuzz` (0.13). Stable Rust is enough: with
# `--sanitizer none` cargo-fuzz passes only stable flags (sancov passes,
# `--cfg fuzzing`); no sanitizer because the appliance's own code is safe
# Rust and the C it links (libyara) is not reached by these targets.
# Builds into $FUZZ_DIR/target (a release build of every dependency with
# coverage instrumentation: long the first time). Runs at nice 19.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-300}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request_head multipart settings executable)
work=${FUZZ_DIR:-/var/tmp/sandgnat-fuzz}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$work/target}
mkdir -p "$repo/benches/results"
out=$repo/benches/results/fuzz-$(date -u +%Y%m%dT%H%M%SZ).jsonl
cd "$repo/fuzz"
nice -n 19 cargo fuzz build --sanitizer none >&2
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  log=$work/$t.log
  before=$(find "$work/artifacts/$t" -type f | wc -l)
  # -timeout: an input that takes 10 s is a hang; -rss_limit_mb: a
  # runaway allocation is a finding too.
  set +e
  nice -n 19 cargo fuzz run --sanitizer none "$t" "$work/corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
  status=$?
  set -e
  after=$(find "$work/artifacts/$t" -type f | wc -l)
  python3 - "$t" "$secs" "$status" "$((after - before))" "$log" "$work/corpus/$t" <<'PY' | tee -a "$out"
import json, os, re, sys
t, secs, status, found, log, corpus = sys.argv[1:]
text = open(log, errors="replace").read()
def stat(name):
    m = re.findall(rf"stat::{name}:\s+(\d+)", text)
    return int(m[-1]) if m else None
cov = re.findall(r"cov: (\d+) ft: (\d+)", text)
print(json.dumps({
    "target": t, "seconds": int(secs), "exit": int(status),
    "executions": stat("number_of_executed_units"),
    "execs_per_sec": stat("average_exec_per_sec"),
    "peak_rss_mb": stat("peak_rss_mb"),
    "coverage": int(cov[-1][0]) if cov else None,
    "features": int(cov[-1][1]) if cov else None,
    "corpus_files": len(os.listdir(corpus)),
    "new_artifacts": int(found),
}))
PY
done
echo "raw: $out (logs and artifacts: $work)" >&2
