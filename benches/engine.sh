#!/usr/bin/env bash
# Issue 18: scan engines side by side, through the appliance's scan API
# (benches/engine.rs built once per engine): compile time, load time, a
# loaded worker's PSS/USS, the time of one scan at 4 KiB, a small ELF,
# 1 MiB and 16 MiB, on signature-base and on the bundled rules, and
# whether the engines match the same rules. The builds alternate round by
# round on the same machine.
#
#   ROUNDS=3 bash benches/engine.sh BENCH_BIN BENCH_BIN [BENCH_BIN...]
#
# A BENCH_BIN may carry settings for its runs: `BIN:BENCH_PARTS=2` scans
# with the rules compiled in two parts (benches/engine.rs).
#
# Each BENCH_BIN is an engine bench executable (`cargo bench --profile
# deb --bench engine --no-run` prints its path; copy it aside before
# building the other engine); each names its engine (scan::ENGINE and
# the code its conditions run as), and the ratios are the first's time
# over each other's. Raw output: benches/results/engine-<UTC>.jsonl.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
shared=${SHARED_DIR:-$repo/../shared}
[ $# -ge 2 ] || { echo "usage: engine.sh BENCH_BIN BENCH_BIN [BENCH_BIN...]" >&2; exit 2; }
rounds=${ROUNDS:-3}
sigbase=$(cd "$shared/bench/rules/signature-base/yara" && pwd)
out=$here/results/engine-$(date -u +%Y%m%dT%H%M%SZ).jsonl
for r in $(seq 1 "$rounds"); do
  for spec in "$@"; do
    bin=${spec%%:*}
    envs=()
    [[ "$spec" == *:* ]] && IFS=, read -r -a envs <<<"${spec#*:}"
    for rules in "$sigbase" bundled; do
      echo "round $r: $(basename "$bin") ${envs[*]} $rules" >&2
      env "${envs[@]}" "$bin" "$rules" | sed "s/^{/{\"round\":$r,/" >> "$out"
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
engines = list(dict.fromkeys(r["engine"] for r in rows))
print("| rules | figure | " + " | ".join(engines) + " | " + " | ".join(f"{engines[0]}/{e}" for e in engines[1:]) + " |")
print("|---|---|" + "---|" * (2 * len(engines) - 1))
for rules in sorted({r["rules"] for r in rows}, reverse=True):
    for f in ["4k", "elf", "1m", "16m", "compile_s", "compiled_MiB", "load_ms", "worker_pss_MiB", "worker_uss_MiB", "rules_pss_MiB"]:
        vals = [statistics.median(fig[(rules, e, f)]) if fig[(rules, e, f)] else float("nan") for e in engines]
        unit = " (ms/scan, median)" if f in ("4k", "elf", "1m", "16m") else ""
        ratios = " | ".join(f"{vals[0] / v:.2f}" if v else "" for v in vals[1:])
        print(f"| {rules} | {f}{unit} | " + " | ".join(f"{v:.3f}" if v < 10 else f"{v:.1f}" for v in vals) + f" | {ratios} |")
print()
for (rules, sample), by in sorted(matches.items()):
    first, *others = [e for e in engines if e in by]
    for e in others:
        s1, s2 = by[first], by[e]
        print(f"matches {rules} {sample}: {first} {len(s1)}, {e} {len(s2)}; only {first}: {sorted(s1 - s2)}; only {e}: {sorted(s2 - s1)}")
EOF
