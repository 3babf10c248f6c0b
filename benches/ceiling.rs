//! The machine's ceiling for intake work: one pass of SHA-256, SHA-1, MD5
//! and the scan (the benchmark rule set, through `sandgnat::scan`) over a sample already in memory, on
//! one core; times the cores is what no intake server can beat. The
//! submit benchmark (`benches/submit.sh`) reports its throughput against it.
//!
//! Run: `cargo bench --bench ceiling` (BENCH_DIR as for ../shared/bench,
//! default /tmp/sandgnat-bench; the rules are generated when missing;
//! BENCH_RULES_DIR, set by benches/lib.sh, scans with other rules).

use std::path::PathBuf;
use std::time::Instant;

#[path = "common/xorshift.rs"]
mod xorshift;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

fn main() {
    let dir =
        PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp/sandgnat-bench".into()));
    let rules_dir = std::env::var_os("BENCH_RULES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("rules"));
    if !rules_dir.is_dir() {
        let gen = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/bench/gen_rules.py");
        let ok = std::process::Command::new("python3")
            .arg(gen)
            .arg(&dir)
            .status()
            .map(|s| s.success());
        assert!(
            matches!(ok, Ok(true)),
            "cannot generate the benchmark rules with {gen}"
        );
    }
    let compiled = sandgnat::scan::compile(Some(&rules_dir)).expect("benchmark rules compile");
    let rules = sandgnat::scan::RuleSet::load(&compiled.bytes).expect("rules load");
    let sample = std::fs::read(dir.join("samples/16m.bin")).unwrap_or_else(|_| {
        // Same shape as gen_rules.py's sample: pseudo-random bytes.
        xorshift::bytes(16 << 20, 0x9e3779b97f4a7c15)
    });
    let mb = sample.len() as f64 / (1 << 20) as f64;
    let rounds = 5;
    let mut best = [f64::MAX; 4];
    for _ in 0..rounds {
        let t = Instant::now();
        std::hint::black_box(Sha256::digest(&sample));
        best[0] = best[0].min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(Sha1::digest(&sample));
        best[1] = best[1].min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(Md5::digest(&sample));
        best[2] = best[2].min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let target = sandgnat::scan::ScanTarget {
            data: sandgnat::scan::ScanData::Memory(&sample),
            filename: "sample.bin",
            filetype: "data",
        };
        std::hint::black_box(rules.scan(&target, 60).expect("scan"));
        best[3] = best[3].min(t.elapsed().as_secs_f64());
    }
    let total: f64 = best.iter().sum();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    println!(
        "{{\"bench\":\"ceiling\",\"sample_mib\":{mb:.0},\"sha256_mb_s\":{:.0},\"sha1_mb_s\":{:.0},\"md5_mb_s\":{:.0},\"yara_mb_s\":{:.0},\"one_pass_ms_per_mib\":{:.2},\"per_core_mb_s\":{:.0},\"cores\":{cores},\"ceiling_mb_s\":{:.0}}}",
        mb / best[0], mb / best[1], mb / best[2], mb / best[3],
        total * 1000.0 / mb, mb / total, cores * mb / total
    );
}
