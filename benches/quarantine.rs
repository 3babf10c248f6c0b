//! What keeping a new sample durably costs the local store, alone: the
//! quarantine's own `store` (spool file written, synced, renamed into
//! `aa/bb/<sha256>`, its directory synced) for unique samples, one after
//! another, on the file system of `BENCH_DIR`. CPU (user and system, from
//! getrusage) and wall time per sample, in two states of the quarantine:
//! `fresh` (its directories made as samples arrive, as on a new node) and
//! `warm` (every `aa/bb` directory there already, the steady state).
//!
//! Run: `cargo bench --bench quarantine` (benches/submit-own-cpu.sh's
//! figures are read beside it: the floor that "202 means durable" puts
//! under every unique submission).

use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "common/xorshift.rs"]
mod xorshift;

use bytes::Bytes;
use sandgnat::storage::local::Quarantine;
use sandgnat::storage::Source;
use sha2::{Digest, Sha256};

/// Process CPU time so far, user and system, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn fresh_dir(root: &Path, name: &str) -> (Quarantine, PathBuf) {
    let base = root.join(name);
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("quarantine")).expect("quarantine dir");
    std::fs::create_dir_all(base.join("spool")).expect("spool dir");
    (
        Quarantine::at(base.join("quarantine"), base.join("spool")),
        base,
    )
}

/// Stores `n` unique samples of `size` bytes; one JSON line.
fn run(state: &str, q: &Quarantine, size: usize, n: usize, seed: u64) {
    let base = xorshift::bytes(size, seed);
    let samples: Vec<(String, Bytes)> = (0..n)
        .map(|i| {
            let mut b = base.clone();
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            (hex::encode(Sha256::digest(&b)), Bytes::from(b))
        })
        .collect();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    for (sha, bytes) in &samples {
        let stored = q.store(sha, &Source::Memory(bytes.clone())).expect("store");
        assert!(stored.wrote, "every sample is new");
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "{{\"bench\":\"quarantine\",\"state\":\"{state}\",\"bytes\":{size},\"samples\":{n},\"cpu_ms_per_sample\":{:.4},\"wall_ms_per_sample\":{:.4}}}",
        cpu * 1000.0 / n as f64,
        wall * 1000.0 / n as f64
    );
}

fn main() {
    let dir =
        PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp/sandgnat-bench".into()));
    let n: usize = std::env::var("BENCH_QUARANTINE_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let root = dir.join("quarantine-bench");
    for (size, seed) in [(4096usize, 11u64), (1 << 20, 12)] {
        let count = if size > 4096 { n / 10 } else { n };
        let (q, _) = fresh_dir(&root, "fresh");
        run("fresh", &q, size, count, seed);
        let (q, base) = fresh_dir(&root, "warm");
        for a in 0..256 {
            for b in 0..256 {
                std::fs::create_dir_all(base.join(format!("quarantine/{a:02x}/{b:02x}")))
                    .expect("warm directories");
            }
        }
        // Made and written out before the clock starts: the samples'
        // syncs are not charged with them.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        run("warm", &q, size, count, seed + 100);
    }
    let _ = std::fs::remove_dir_all(&root);
}
