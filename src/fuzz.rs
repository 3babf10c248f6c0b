//! Entry points for the fuzz targets in `fuzz/` (a cargo workspace of its
//! own, run by `benches/fuzz.sh`, never by CI): each takes arbitrary bytes
//! and drives one parser of hostile input the way the appliance does, and
//! checks what must hold whatever the input. libFuzzer looks for a panic,
//! a hang or a runaway allocation in them; the regression tests for what
//! it found call the same functions. The appliance itself never calls
//! them.
//!
//! The targets: the front end's HTTP/1 head guard (`request_head`), the
//! intake's multipart reader (`multipart`), the settings loader
//! (`settings`) and the static analysis of executables (`executable`).

use std::cell::RefCell;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};

thread_local! {
    /// One event loop per fuzzing thread, reused by every input.
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| {
        let mut rt = rt.borrow_mut();
        let rt = rt.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("an event loop for the fuzz target")
        });
        rt.block_on(f)
    })
}

/// A request head as the front end reads it (`frontend::head`): the bytes
/// arrive on a connection, are read under the head budget, checked by our
/// framing rules and then by pingora's parser. Whatever the bytes, the
/// outcome is a head pingora accepts, a refusal with a 4xx, or nothing
/// (the connection ended mid-head); and the search for the head's end
/// finds the same end however the bytes are split into reads.
pub fn request_head(data: &[u8]) {
    use crate::frontend::head::{read_head, Head, HeadRules, Scan, Waiting};
    use crate::frontend::headbudget::HeadBudget;
    let settings = crate::config::Settings::default();
    let rules = HeadRules::new(&settings);
    let budget = HeadBudget::new(64 << 10);
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let mut stream: pingora_core::protocols::Stream = Box::new(std::io::Cursor::new(data.to_vec()));
    let waiting = Waiting {
        kept_alive: false,
        keepalive: None,
    };
    let head = block_on(read_head(&mut stream, &rules, &budget, waiting, &shutdown));
    match head {
        Head::Ready(bytes) => assert!(!bytes.is_empty()),
        Head::Refused(r) => assert!(r.status.is_client_error(), "{} {}", r.status, r.code),
        Head::Gone | Head::Evicted => {}
    }
    assert_eq!(budget.used(), 0, "a finished head still holds budget");

    // The same bytes in reads of sizes the input picks (its own bytes,
    // cycled), against one read of all of them.
    let mut whole = Scan::default();
    let end = whole.advance(data);
    let mut split = Scan::default();
    let mut at = 0;
    let mut i = 0;
    let found = loop {
        if at >= data.len() {
            break None;
        }
        at = (at + 1 + usize::from(data[i % data.len()] % 16)).min(data.len());
        i += 1;
        if let Some(e) = split.advance(&data[..at]) {
            break Some(e);
        }
    };
    assert_eq!(
        found, end,
        "the end of the head depends on how it was split"
    );
}

/// The body of `POST /v1/submit` as multipart: the first line is the
/// `Content-Type` header, the rest the body. Client input is refused with
/// a 4xx, never a 5xx or a panic; a sample received is as long as the
/// reader says.
pub fn multipart(data: &[u8]) {
    use crate::intake::{metadata::Metadata, spool::MemoryBudget, Receiving};
    let (ct, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(ct) = HeaderValue::from_bytes(ct) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, ct);
    let boundary = match crate::intake::multipart_boundary(&headers) {
        Ok(Some(b)) => b,
        Ok(None) => return,
        Err(e) => {
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message);
            return;
        }
    };
    let spool = std::env::temp_dir().join(format!("sandgnat-fuzz-spool-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&spool);
    // Samples up to 1 KiB stay in memory, so the spool is exercised too.
    let memory: Arc<MemoryBudget> = MemoryBudget::new(1024, 1 << 20);
    let to = Receiving {
        spool: &spool,
        limit: 64 << 10,
        memory: &memory,
    };
    let body = axum::body::Body::from(body.to_vec());
    let mut meta = Metadata::default();
    let received = block_on(crate::intake::receive_multipart(
        &to, body, boundary, &mut meta,
    ));
    match received {
        Ok(r) => assert!(r.size <= to.limit),
        Err(e) => assert!(
            e.status.is_client_error(),
            "{} {}: {}",
            e.status,
            e.code,
            e.message
        ),
    }
    assert_eq!(memory.used(), 0, "memory not given back");
}

/// A settings file. The loader refuses or accepts it without a panic, and
/// what it accepts, written out as TOML (what `check-config` prints), is
/// read back as the same settings.
pub fn settings(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(settings) = crate::config::Sources::from_toml(text) else {
        return;
    };
    let shown = toml::to_string(&settings).expect("accepted settings render as TOML");
    let again = crate::config::Sources::from_toml(&shown)
        .unwrap_or_else(|e| panic!("accepted settings, written out, are refused: {e}\n{shown}"));
    assert_eq!(again, settings, "settings changed on the way out and back");
}

/// A sample as the `static` job sees it: its type from its magic bytes,
/// then the ELF / PE / Mach-O parser without the job's outer guard (which
/// would hide every panic; a fuzzer should see them), entropy and strings.
/// The fuzz target lets the panics the parser contains itself (around
/// goblin readers known to panic) pass: `tolerate_caught_panics`.
pub fn executable(data: &[u8]) {
    use crate::jobs::static_analysis::{entropy, executable, strings};
    let file_type = crate::intake::filetype::from_magic(&data[..data.len().min(512)]);
    if let Some(Ok(headers)) = executable::parse(file_type, data) {
        assert!(headers.is_object(), "{headers}");
    }
    let e = entropy::of(data);
    assert!((0.0..=8.0).contains(&e), "entropy {e}");
    let mut s = strings::Strings::default();
    s.update(data);
    let (total, shown) = s.finish();
    assert!(shown.len() as u64 <= total);
}

/// libFuzzer's Rust glue aborts on any panic, even one the code catches
/// (its panic hook runs first); the static analysis contains the panics
/// goblin is known to raise, so a target that wants them to pass installs
/// this hook, which only prints (the first few): a panic that escapes still
/// ends the run as a crash, where the glue catches it. For fuzz targets
/// only (it replaces the process's panic hook).
pub fn tolerate_caught_panics() {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let shown = AtomicUsize::new(0);
        std::panic::set_hook(Box::new(move |info| {
            if shown.fetch_add(1, Relaxed) < 20 {
                eprintln!("panic (caught by the parser's guard, or the crash below): {info}");
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    /// Every committed seed and every input a fuzzer once failed on (kept
    /// beside the seeds as `fuzz/seeds/<target>/regression-*`) goes
    /// through its entry point.
    fn each_input(target: &str, run: fn(&[u8])) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            if let Err(e) = std::panic::catch_unwind(|| run(&data)) {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{}: {why}", path.display());
            }
            n += 1;
        }
        assert!(n > 0, "no inputs in {}", dir.display());
    }

    #[test]
    fn request_head_inputs() {
        each_input("request_head", super::request_head);
    }

    #[test]
    fn multipart_inputs() {
        each_input("multipart", super::multipart);
    }

    #[test]
    fn settings_inputs() {
        each_input("settings", super::settings);
    }

    #[test]
    fn executable_inputs() {
        each_input("executable", super::executable);
    }
}
