#!/usr/bin/env bash
# Issue 18: two scan engines side by side, through the appliance's scan
# API (benches/engine.rs built once per engine): compile time, load time,
# a loaded worker's PSS/USS, the time of one scan at 4 KiB, a small ELF,
# 1 MiB and 16 MiB, on signature-base and on the bundled rules, and
# whether both engines match the same rules. The two builds alternate
# round by round on the same machine.
#
#   bash benches/engine.sh A_BENCH_BIN B_BENCH_BIN [ROUNDS]
#
# Each *_BENCH_BIN is an engine bench executable (`cargo bench --profile
# deb --bench engine --no-run` prints its path; copy it aside before
# building the other engine). Raw output: benches/results/engine-<UTC>.jsonl.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
shared=${SHARED_DIR:-$repo/../shared}
a=${1:?engine bench binary A}
b=${2:?engine bench binary B}
rounds=${3:-3}
sigbase=$(cd "$shared/bench/rules/signature-base/yara" && pwd)
out=$here/results/engine-$(date -u +%Y%m%dT%H%M%SZ).jsonl
for r in $(seq 1 "$rounds"); do
  for bin in "$a" "$b"; do
    for rules in "$sigbase" bundled; do
      echo "round $r: $(basename "$bin") $rules" >&2
      "$bin" "$rules" | sed "s/^{/{\"round\":$r,/" >> "$out"
    done
  done
done
echo "raw: $out" >&2
python3 - "$out" <<'EOF'
import json, sys, statistics
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1])]
fig = defaultdict(list)
matches = defaultdict(dict)
for r in rows:
    k = (r["rules"], r["engine"])
    if r["what"] == "scan":
        fig[k + (r["sample"],)].append(r["median_ms"])
    elif r["what"] == "compile":
        fig[k + ("compile_s",)].append(r["compile_s"])
        fig[k + ("compiled_MiB",)].append(r["compiled_bytes"] / 2**20)
    elif r["what"] == "worker":
        fig[k + ("load_ms",)].append(r["load_ms"])
        fig[k + ("worker_pss_MiB",)].append(r["pss_kib"] / 1024)
        fig[k + ("worker_uss_MiB",)].append(r["uss_kib"] / 1024)
        fig[k + ("rules_pss_MiB",)].append((r["pss_kib"] - r["pss_before_kib"]) / 1024)
    elif r["what"] == "matches":
        matches[(r["rules"], r["sample"])][r["engine"]] = set(r["rules_matched"])
engines = sorted({r["engine"] for r in rows})
print("| rules | figure | " + " | ".join(engines) + " | " + (f"{engines[0]}/{engines[1]}" if len(engines) == 2 else "") + " |")
print("|---|---|" + "---|" * (len(engines) + 1))
for rules in sorted({r["rules"] for r in rows}, reverse=True):
    for f in ["4k", "elf", "1m", "16m", "compile_s", "compiled_MiB", "load_ms", "worker_pss_MiB", "worker_uss_MiB", "rules_pss_MiB"]:
        vals = [statistics.median(fig[(rules, e, f)]) if fig[(rules, e, f)] else float("nan") for e in engines]
        unit = " (ms/scan, median)" if f in ("4k", "elf", "1m", "16m") else ""
        ratio = f"{vals[0] / vals[1]:.2f}" if len(vals) == 2 and vals[1] else ""
        print(f"| {rules} | {f}{unit} | " + " | ".join(f"{v:.3f}" if v < 10 else f"{v:.1f}" for v in vals) + f" | {ratio} |")
print()
for (rules, sample), by in sorted(matches.items()):
    if len(by) != 2:
        continue
    (e1, s1), (e2, s2) = sorted(by.items())
    print(f"matches {rules} {sample}: {e1} {len(s1)}, {e2} {len(s2)}; only {e1}: {sorted(s1 - s2)}; only {e2}: {sorted(s2 - s1)}")
EOF
