//! The scan engine on its own, through the appliance's `scan` API (the
//! functions the master and the workers call): compile time, the
//! compiled form's size and load time, a loaded worker's memory, the time
//! of one scan at each sample size, and which rules match a set of
//! samples (for comparing two engines' answers). `benches/engine.sh`
//! runs this for several builds (one per engine) alternately.
//!
//! Run: `cargo bench --bench engine -- RULES_DIR|bundled`. One JSON line
//! a figure. `BENCH_ELF` is the small ELF scanned (default
//! /usr/bin/mesg); `BENCH_SCAN_SECONDS` how long each size is scanned.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandgnat::scan::{self, RuleSet, ScanData, ScanTarget};

#[path = "common/xorshift.rs"]
mod xorshift;

/// Pss and Uss (private clean + private dirty) of this process, in KiB.
fn pss_uss() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        field("Pss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    )
}

/// What a worker does at start: the compiled bytes in, the rules loaded,
/// the bytes dropped, one small scan (a scanner's first use sets up its
/// state). Run in a child of its own so that nothing the parent compiled
/// or scanned counts.
fn worker(compiled: &Path) {
    let before = pss_uss();
    let bytes = std::fs::read(compiled).expect("compiled rules");
    let t = Instant::now();
    let rules = RuleSet::load(&bytes).expect("rules load");
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    drop(bytes);
    let sample = xorshift::bytes(4096, 7);
    let target = ScanTarget {
        data: ScanData::Memory(&sample),
        filename: "sample.bin",
        filetype: "data",
    };
    rules.scan(&target, 60).expect("scan");
    let after = pss_uss();
    println!(
        "{{\"load_ms\":{load_ms:.1},\"pss_kib\":{},\"uss_kib\":{},\"pss_before_kib\":{},\"uss_before_kib\":{}}}",
        after.0, after.1, before.0, before.1
    );
}

fn matched(rules: &RuleSet, data: &[u8], filename: &str, filetype: &str) -> Vec<String> {
    let target = ScanTarget {
        data: ScanData::Memory(data),
        filename,
        filetype,
    };
    let mut names: Vec<String> = rules
        .scan(&target, 60)
        .expect("scan")
        .into_iter()
        .map(|m| format!("{}:{}", m.namespace, m.rule))
        .collect();
    names.sort();
    names
}

/// Text strings of the rules (`$a = "..."` without escapes), one a line:
/// a sample many rules match, where two engines' answers can differ.
fn rule_strings(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yar" | "yara")) {
                files.push(p);
            }
        }
    }
    files.sort();
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap_or_default()).into_owned();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix('$') else {
                continue;
            };
            let Some(eq) = rest.find("= \"") else {
                continue;
            };
            let value = &rest[eq + 3..];
            let Some(end) = value.rfind('"') else {
                continue;
            };
            let value = &value[..end];
            if !value.contains('\\') && !value.is_empty() {
                out.extend_from_slice(value.as_bytes());
                out.push(b'\n');
            }
        }
    }
    out
}

fn main() {
    let arg = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "bundled".into());
    if let Some(path) = arg.strip_prefix("worker=") {
        worker(Path::new(path));
        return;
    }
    let dir = (arg != "bundled").then(|| PathBuf::from(&arg));
    let set = if dir.is_some() { "dir" } else { "bundled" };
    let label = dir
        .as_ref()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundled".into());
    let rules_label = if label == "yara" {
        "signature-base".to_string()
    } else {
        label
    };
    // BENCH_PARTS=N: the rules compiled in N parts, as `yara.scan_parts`
    // does (samples from 8 MiB then scanned by all parts at once).
    let parts: usize = std::env::var("BENCH_PARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let engine = match parts {
        1 => format!("{}+{}", scan::ENGINE, scan::CODE),
        n => format!("{}+{}+{n}parts", scan::ENGINE, scan::CODE),
    };
    let emit = |what: &str, body: String| {
        println!(
            "{{\"bench\":\"engine\",\"engine\":\"{engine}\",\"rules\":\"{rules_label}\",\"set\":\"{set}\",\"what\":\"{what}\",{body}}}"
        );
    };

    let t = Instant::now();
    let compiled = scan::compile_parts(dir.as_deref(), parts).expect("rules compile");
    let compile_s = t.elapsed().as_secs_f64();
    emit(
        "compile",
        format!(
            "\"compile_s\":{compile_s:.2},\"compiled_bytes\":{},\"files\":{}",
            compiled.bytes.len(),
            compiled.files
        ),
    );

    let tmp = std::env::temp_dir().join(format!("sandgnat-engine-{}.bin", std::process::id()));
    std::fs::write(&tmp, &compiled.bytes).expect("write compiled rules");
    let out = std::process::Command::new(std::env::current_exe().expect("own path"))
        .arg(format!("worker={}", tmp.display()))
        .output()
        .expect("worker child");
    let _ = std::fs::remove_file(&tmp);
    let line = String::from_utf8_lossy(&out.stdout);
    let line = line.trim();
    emit(
        "worker",
        line.trim_start_matches('{')
            .trim_end_matches('}')
            .to_string(),
    );

    let t = Instant::now();
    let rules = RuleSet::load(&compiled.bytes).expect("rules load");
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    emit(
        "load",
        format!("\"load_ms\":{load_ms:.1},\"rules_count\":{}", rules.count()),
    );

    let elf_path =
        PathBuf::from(std::env::var("BENCH_ELF").unwrap_or_else(|_| "/usr/bin/mesg".into()));
    let elf = std::fs::read(&elf_path).expect("the ELF sample (BENCH_ELF)");
    let seconds: f64 = std::env::var("BENCH_SCAN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let samples: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("4k", xorshift::bytes(4096, 1), "sample.bin", "data"),
        ("elf", elf.clone(), "mesg", "elf"),
        ("1m", xorshift::bytes(1 << 20, 2), "sample.bin", "data"),
        ("16m", xorshift::bytes(16 << 20, 3), "sample.bin", "data"),
    ];
    for (name, data, filename, filetype) in &samples {
        let target = ScanTarget {
            data: ScanData::Memory(data),
            filename,
            filetype,
        };
        // One scan first: the scanner's first use is not the steady state.
        rules.scan(&target, 60).expect("scan");
        let mut times = Vec::new();
        let start = Instant::now();
        while times.len() < 5 || start.elapsed() < Duration::from_secs_f64(seconds) {
            let t = Instant::now();
            std::hint::black_box(rules.scan(&target, 60).expect("scan"));
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        let mb = data.len() as f64 / (1 << 20) as f64;
        emit(
            "scan",
            format!(
                "\"sample\":\"{name}\",\"bytes\":{},\"scans\":{},\"median_ms\":{:.3},\"min_ms\":{:.3},\"mb_s\":{:.1}",
                data.len(),
                times.len(),
                median * 1000.0,
                times[0] * 1000.0,
                mb / median
            ),
        );
    }

    let eicar: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
    let strings = match &dir {
        Some(d) => rule_strings(d),
        None => rule_strings(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets/rules"
        ))),
    };
    let mut parity: Vec<(String, Vec<u8>, String, &str)> = vec![
        ("eicar".into(), eicar.to_vec(), "eicar.com".into(), "text"),
        ("elf".into(), elf, "mesg".into(), "elf"),
        ("rule-strings".into(), strings, "strings.txt".into(), "text"),
    ];
    for extra in std::env::var("BENCH_PARITY_FILES")
        .unwrap_or_default()
        .split(':')
    {
        if extra.is_empty() {
            continue;
        }
        let p = Path::new(extra);
        if let Ok(bytes) = std::fs::read(p) {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            parity.push((extra.to_string(), bytes, name, "data"));
        }
    }
    for (name, data, filename, filetype) in &parity {
        let found = matched(&rules, data, filename, filetype);
        let list = found
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(",");
        emit(
            "matches",
            format!(
                "\"sample\":\"{name}\",\"count\":{},\"rules_matched\":[{list}]",
                found.len()
            ),
        );
    }
}
