//! The `static` job: what can be learnt from a sample without running it.
//! The file (in the quarantine, or the runner's private copy of a remote
//! store's object) is opened read-only and only ever read:
//! its type from magic bytes, size, Shannon entropy (whole file and per
//! section), printable strings, a TLSH fuzzy hash, and ELF / PE / Mach-O
//! headers, libraries, imports and exports through `goblin`, with the PE
//! import hash.
//!
//! Bounded: at most `intake.max_sample_bytes` are read, streamed in
//! pieces; headers are parsed from the first `PARSE_LIMIT` bytes held in
//! memory; every list has a cap. Malformed input never fails the job: a
//! parser error (or a parser panic) becomes `parse_error` in the result,
//! and the rest of the result stands.
//!
//! Fuzzy hashes: TLSH through the `tlsh2` crate (pure Rust, Apache-2.0 /
//! BSD, no dependencies; TLSH needs 50 bytes or more with some variety,
//! else it is `null`). ssdeep is not computed: the pure-Rust
//! implementation (`ffuzzy`) is GPL-2.0-or-later, which this Apache-2.0
//! appliance cannot link, and the `ssdeep` crate wraps the C library
//! (GPL too).

pub(crate) mod entropy;
pub(crate) mod executable;
mod imphash;
mod machscan;
pub(crate) mod strings;

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::{json, Value};

/// The result document's shape; bumped when a field changes meaning.
pub const RESULT_VERSION: u32 = 1;
/// Bytes held in memory for the header parsers (the rest only streams).
pub const PARSE_LIMIT: u64 = 256 << 20;
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AnalyseError {
    #[error("the sample is not in the quarantine ({0})")]
    Missing(String),
    #[error("cannot read the sample {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Analyses the file at `path`, reading at most `max_bytes` of it.
/// Blocking: run it on the blocking pool.
pub fn analyse(path: &Path, max_bytes: u64) -> Result<Value, AnalyseError> {
    let io_err = |source: io::Error| AnalyseError::Io {
        path: path.display().to_string(),
        source,
    };
    // Never follow a link out of the quarantine; never open for writing.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => AnalyseError::Missing(path.display().to_string()),
            _ => io_err(e),
        })?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(io_err(io::Error::other("not a regular file")));
    }
    let size = meta.len();
    let keep = max_bytes.min(PARSE_LIMIT).min(size) as usize;
    let mut head: Vec<u8> = Vec::with_capacity(keep);
    let mut histogram = entropy::Histogram::default();
    let mut strings = strings::Strings::default();
    let mut tlsh = tlsh2::TlshDefaultBuilder::new();
    let mut read_total: u64 = 0;
    let mut reader = file.take(max_bytes);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        let chunk = &buf[..n];
        histogram.update(chunk);
        strings.update(chunk);
        tlsh.update(chunk);
        if head.len() < keep {
            let room = keep - head.len();
            head.extend_from_slice(&chunk[..n.min(room)]);
        }
        read_total += n as u64;
    }
    let file_type = crate::intake::filetype::from_magic(&head[..head.len().min(512)]);
    let (strings_total, strings_shown) = strings.finish();
    let tlsh = tlsh
        .build()
        .map(|t| String::from_utf8_lossy(&t.hash()).into_owned());

    let mut result = json!({
        "version": RESULT_VERSION,
        "file_type": file_type,
        "size": size,
        "bytes_analysed": read_total,
        "truncated": read_total < size,
        "entropy": histogram.entropy(),
        "tlsh": tlsh,
        "ssdeep": null,
        "strings": { "total": strings_total, "shown": strings_shown },
    });
    // goblin is careful, but this is hostile input: a panic in a parser
    // costs the header fields, never the job or the runner.
    let parsed = std::panic::catch_unwind(|| executable::parse(file_type, &head))
        .unwrap_or_else(|_| Some(Err("the parser panicked on this input".into())));
    match parsed {
        Some(Ok(headers)) => result["executable"] = headers,
        Some(Err(e)) => {
            result["executable"] = Value::Null;
            result["parse_error"] = Value::String(e);
        }
        None => result["executable"] = Value::Null,
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sandgnat-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn an_elf_from_this_machine() {
        let exe = std::fs::read("/bin/true").unwrap();
        let r = analyse(&write("true", &exe), 1 << 30).unwrap();
        assert_eq!(r["file_type"], "elf");
        assert_eq!(r["size"], exe.len() as u64);
        let x = &r["executable"];
        assert_eq!(x["format"], "elf", "{r}");
        assert!(x["libraries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("libc.so")));
        assert!(x["imports_total"].as_u64().unwrap() > 0);
        assert!(r["tlsh"].as_str().unwrap().starts_with("T1"));
        let e = r["entropy"].as_f64().unwrap();
        assert!(e > 0.0 && e < 8.0);
        assert!(x["sections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == ".text" && s["entropy"].as_f64().unwrap() > 0.0));
    }

    /// A minimal PE32+ for x86-64: one `.idata` section importing two
    /// functions of KERNEL32.dll by name and two of WS2_32.dll by ordinal.
    fn tiny_pe() -> Vec<u8> {
        let mut f = vec![0u8; 0x400];
        let put = |f: &mut Vec<u8>, at: usize, bytes: &[u8]| {
            f[at..at + bytes.len()].copy_from_slice(bytes);
        };
        let u16le = |v: u16| v.to_le_bytes();
        let u32le = |v: u32| v.to_le_bytes();
        let u64le = |v: u64| v.to_le_bytes();
        put(&mut f, 0, b"MZ");
        put(&mut f, 0x3c, &u32le(0x40));
        put(&mut f, 0x40, b"PE\0\0");
        // COFF header.
        let coff = 0x44;
        put(&mut f, coff, &u16le(0x8664));
        put(&mut f, coff + 2, &u16le(1));
        put(&mut f, coff + 4, &u32le(1_700_000_000));
        put(&mut f, coff + 16, &u16le(240));
        put(&mut f, coff + 18, &u16le(0x0022));
        // Optional header (PE32+).
        let opt = coff + 20;
        put(&mut f, opt, &u16le(0x20b));
        put(&mut f, opt + 16, &u32le(0x1000)); // entry point
        put(&mut f, opt + 20, &u32le(0x1000)); // base of code
        put(&mut f, opt + 24, &u64le(0x1_4000_0000)); // image base
        put(&mut f, opt + 32, &u32le(0x1000)); // section alignment
        put(&mut f, opt + 36, &u32le(0x200)); // file alignment
        put(&mut f, opt + 40, &u16le(6));
        put(&mut f, opt + 48, &u16le(6));
        put(&mut f, opt + 56, &u32le(0x2000)); // size of image
        put(&mut f, opt + 60, &u32le(0x200)); // size of headers
        put(&mut f, opt + 68, &u16le(3)); // console subsystem
        put(&mut f, opt + 108, &u32le(16)); // data directories
        put(&mut f, opt + 112 + 8, &u32le(0x1000)); // import table RVA
        put(&mut f, opt + 112 + 12, &u32le(60)); // and size
                                                 // Section table.
        let sec = opt + 240;
        put(&mut f, sec, b".idata\0\0");
        put(&mut f, sec + 8, &u32le(0x200));
        put(&mut f, sec + 12, &u32le(0x1000));
        put(&mut f, sec + 16, &u32le(0x200));
        put(&mut f, sec + 20, &u32le(0x200));
        put(&mut f, sec + 36, &u32le(0xC000_0040));
        // The section: RVA 0x1000 is file offset 0x200.
        let at = |rva: usize| rva - 0x1000 + 0x200;
        for (i, (ilt, name, iat)) in [(0x1040u32, 0x1100u32, 0x1080u32), (0x1060, 0x1110, 0x10a0)]
            .into_iter()
            .enumerate()
        {
            let d = at(0x1000 + i * 20);
            put(&mut f, d, &u32le(ilt));
            put(&mut f, d + 12, &u32le(name));
            put(&mut f, d + 16, &u32le(iat));
        }
        for table in [0x1040, 0x1080] {
            put(&mut f, at(table), &u64le(0x1120));
            put(&mut f, at(table + 8), &u64le(0x1130));
        }
        for table in [0x1060, 0x10a0] {
            put(&mut f, at(table), &u64le(1 << 63 | 23));
            put(&mut f, at(table + 8), &u64le(1 << 63 | 115));
        }
        put(&mut f, at(0x1100), b"KERNEL32.dll\0");
        put(&mut f, at(0x1110), b"WS2_32.dll\0");
        put(&mut f, at(0x1122), b"LoadLibraryA\0");
        put(&mut f, at(0x1132), b"GetProcAddress\0");
        f
    }

    #[test]
    fn a_pe_with_imports_by_name_and_ordinal() {
        let r = analyse(&write("tiny.exe", &tiny_pe()), 1 << 20).unwrap();
        assert_eq!(r["file_type"], "pe");
        let x = &r["executable"];
        assert_eq!(x["format"], "pe", "{r}");
        assert_eq!(x["arch"], "x86_64");
        assert_eq!(x["bits"], 64);
        assert_eq!(x["type"], "exe");
        assert_eq!(x["subsystem"], "windows_cui");
        assert_eq!(x["sections"][0]["name"], ".idata");
        assert_eq!(x["sections"][0]["flags"], "rw");
        assert!(x["sections"][0]["entropy"].as_f64().unwrap() > 0.0);
        assert_eq!(
            x["imports"],
            json!([
                {"dll": "KERNEL32.dll", "functions": ["LoadLibraryA", "GetProcAddress"]},
                {"dll": "WS2_32.dll", "functions": ["ord23", "ord115"]},
            ])
        );
        assert_eq!(x["imports_total"], 4);
        // pefile: ws2_32 ordinals 23 and 115 are socket and WSAStartup.
        use md5::{Digest, Md5};
        let want = hex::encode(Md5::digest(
            b"kernel32.loadlibrarya,kernel32.getprocaddress,ws2_32.socket,ws2_32.wsastartup",
        ));
        assert_eq!(x["imphash"], want.as_str());
    }

    /// Found by `fuzz/` (target `executable`): a Mach-O whose bind opcodes
    /// name a segment it does not have made goblin panic inside the import
    /// reader, which cost every header field. Now only the imports are
    /// lost, and said so.
    #[test]
    fn a_mach_o_binding_to_a_missing_segment_keeps_its_other_fields() {
        let data = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/seeds/executable/regression-macho-bind-segment-index"),
        )
        .unwrap();
        assert_eq!(crate::intake::filetype::from_magic(&data), "macho");
        let headers = executable::parse("macho", &data)
            .expect("a Mach-O is parsed")
            .expect("its header reads");
        assert_eq!(headers["format"], "macho", "{headers}");
        assert!(headers["arch"].is_string(), "{headers}");
        assert!(
            headers["imports_error"].as_str().unwrap().contains("bind"),
            "{headers}"
        );
        assert!(headers["libraries"].is_array(), "{headers}");
        let r = analyse(&write("macho-bind", &data), 1 << 20).unwrap();
        assert!(r["parse_error"].is_null(), "{r}");
        assert_eq!(r["executable"]["format"], "macho", "{r}");
    }

    /// Found by `fuzz/` (target `executable`): a Mach-O of 1,187 bytes
    /// whose bind opcodes ask for 2^n imports made goblin allocate
    /// gigabytes and run for seconds. The bindings are counted first; past
    /// the limit the imports are not read, and the rest stands.
    #[test]
    fn a_mach_o_asking_for_billions_of_imports_is_not_expanded() {
        let data = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/seeds/executable/regression-macho-bind-repeat-count"),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let headers = executable::parse("macho", &data)
            .expect("a Mach-O is parsed")
            .expect("its header reads");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(headers["format"], "macho", "{headers}");
        let why = headers["imports_error"].as_str().unwrap();
        assert!(why.contains("bindings"), "{headers}");
    }

    /// Found by `fuzz/` (target `executable`): a Mach-O whose export trie
    /// has a node among its own descendants made goblin recurse until the
    /// stack overflowed, which kills the whole runner (no `catch_unwind`
    /// survives it), on every retry of the job. The trie is walked first
    /// and refused.
    #[test]
    fn a_mach_o_whose_export_trie_loops_is_refused_not_walked() {
        let data = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/seeds/executable/regression-macho-export-trie-cycle"),
        )
        .unwrap();
        let headers = executable::parse("macho", &data)
            .expect("a Mach-O is parsed")
            .expect("its header reads");
        assert_eq!(headers["format"], "macho", "{headers}");
        let why = headers["exports_error"].as_str().unwrap();
        assert!(why.contains("export trie"), "{headers}");
    }

    #[test]
    fn malformed_headers_are_a_field_not_a_failure() {
        let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
        bytes.extend_from_slice(&[0xff; 60]);
        let r = analyse(&write("bad-elf", &bytes), 1 << 20).unwrap();
        assert_eq!(r["file_type"], "elf");
        assert!(r["parse_error"].is_string(), "{r}");
        let mut mz = b"MZ".to_vec();
        mz.extend_from_slice(&[0x41; 200]);
        let r = analyse(&write("bad-pe", &mz), 1 << 20).unwrap();
        assert!(r["parse_error"].is_string(), "{r}");
        // Truncated read: only max_bytes are looked at.
        let r = analyse(&write("big", &[0u8; 4096]), 1000).unwrap();
        assert_eq!(r["bytes_analysed"], 1000);
        assert_eq!(r["truncated"], true);
        assert!(matches!(
            analyse(Path::new("/nonexistent/x"), 10),
            Err(AnalyseError::Missing(_))
        ));
    }
}
