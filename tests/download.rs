//! Sample downloads end to end, through the real binary and a database of
//! its own: the password-protected zip opened by the readers analysts use
//! (Info-ZIP unzip, 7-Zip, Python's zipfile), the raw form the bridge
//! reads, who may download what, the audit row of each download, and the
//! memory a 128 MiB archive costs the worker that streams it.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::db::TestDb;
use common::{request_unix_body, Appliance};
use serde_json::Value;

fn start(tag: &str, db: &TestDb, server: &str, intake: &str) -> Appliance {
    Appliance::start(
        tag,
        server,
        &format!(
            "[database]\nurl = \"{}\"\n[intake]\nstatic_analysis_enabled = false\n{intake}\n\
             [queue]\nrunners = 0\n",
            db.url()
        ),
    )
}

/// Random bytes (xorshift, seeded from the clock) with a marker inside.
fn sample(len: usize) -> Vec<u8> {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    let marker = b"SANDGNAT-DOWNLOAD-TEST-MARKER";
    out[len / 2..len / 2 + marker.len()].copy_from_slice(marker);
    out
}

struct Download {
    status: u16,
    headers: Vec<(String, String)>,
    /// Where the body was written.
    file: PathBuf,
    len: u64,
}

impl Download {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.file).unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes()).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.bytes())
            )
        })
    }
}

/// GETs `path` on the workers' socket and streams the body to `dest`
/// (binary-safe, and without holding 128 MiB in the test).
fn download(app: &Appliance, path: &str, key: &str, request_id: &str, dest: &Path) -> Download {
    download_pausing(app, path, key, request_id, dest, u64::MAX, || {})
}

/// As `download`, calling `paused` once `pause_at` body bytes are in:
/// the server is then held mid-stream by the connection's backpressure.
fn download_pausing(
    app: &Appliance,
    path: &str,
    key: &str,
    request_id: &str,
    dest: &Path,
    pause_at: u64,
    mut paused: impl FnMut(),
) -> Download {
    let mut s = UnixStream::connect(&app.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: sandgnat\r\nConnection: close\r\n\
         X-API-Key: {key}\r\nX-Request-Id: {request_id}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut out = std::fs::File::create(dest).unwrap();
    let mut len = std::io::copy(&mut (&mut s).take(pause_at), &mut out).unwrap();
    if len == pause_at {
        paused();
        len += std::io::copy(&mut s, &mut out).unwrap();
    }
    let d = Download {
        status,
        headers,
        file: dest.to_path_buf(),
        len,
    };
    if let Some(cl) = d.header("content-length") {
        assert_eq!(
            cl.parse::<u64>().unwrap(),
            len,
            "body against Content-Length"
        );
    }
    d
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn submit_tlp(app: &Appliance, key: &str, body: &[u8], tlp: &str) -> Value {
    let r = request_unix_body(
        &app.socket,
        "POST",
        &format!("/v1/submit?tlp={tlp}"),
        &[
            ("X-API-Key", key),
            ("Content-Type", "application/octet-stream"),
        ],
        Some(body),
    )
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()
}

#[test]
fn downloads_open_with_the_password_and_follow_visibility() {
    let db = TestDb::create("download");
    let app = start("download", &db, "workers = 2\n", "");
    let submitter = app.new_key("submitter");
    let other = app.new_key("submitter");
    let reader = app.new_key("reader");
    let bridge = app.new_key("bridge");
    let admin = app.new_key("admin");
    let dir = app.dir.join("downloads");
    std::fs::create_dir_all(&dir).unwrap();

    let data = sample(600 << 10);
    assert!(data
        .windows(29)
        .any(|w| w == b"SANDGNAT-DOWNLOAD-TEST-MARKER"));
    let sha256 = submit_tlp(&app, &submitter, &data, "amber")["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let content = format!("/v1/samples/{sha256}/content");

    // The zip, for a reader.
    let zip = dir.join("sample.zip");
    let d = download(
        &app,
        &format!("{content}?format=zip"),
        &reader,
        "dl-zip-1",
        &zip,
    );
    assert_eq!(d.status, 200, "{:?}", String::from_utf8_lossy(&d.bytes()));
    assert_eq!(d.header("content-type"), Some("application/zip"));
    assert_eq!(
        d.header("content-disposition"),
        Some(format!("attachment; filename=\"{sha256}.zip\"").as_str())
    );
    assert_eq!(d.header("x-content-type-options"), Some("nosniff"));
    assert!(d.header("content-length").is_some());
    assert!(d.len > data.len() as u64);
    // The sample's bytes are not readable in the archive.
    let archive = d.bytes();
    assert!(!archive
        .windows(29)
        .any(|w| w == b"SANDGNAT-DOWNLOAD-TEST-MARKER"));

    // (a) Info-ZIP unzip: the right password extracts the very bytes, as
    // a file nobody may execute; a wrong one extracts nothing.
    let out = dir.join("unzip");
    let refused = Command::new("unzip")
        .args(["-q", "-P", "wrong"])
        .arg(&zip)
        .arg("-d")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(!out.join(&sha256).exists() || std::fs::read(out.join(&sha256)).unwrap() != data);
    let _ = std::fs::remove_dir_all(&out);
    run(Command::new("unzip")
        .args(["-q", "-P", "infected"])
        .arg(&zip)
        .arg("-d")
        .arg(&out));
    let extracted = out.join(&sha256);
    assert!(std::fs::read(&extracted).unwrap() == data, "unzip's bytes");
    let mode = std::fs::metadata(&extracted).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0, "extracted executable: {mode:o}");

    // (b) 7-Zip.
    let out7 = dir.join("7z");
    run(Command::new("7z")
        .args(["x", "-y", "-pinfected"])
        .arg(format!("-o{}", out7.display()))
        .arg(&zip));
    assert!(
        std::fs::read(out7.join(&sha256)).unwrap() == data,
        "7z's bytes"
    );
    let wrong7 = Command::new("7z")
        .args(["t", "-pwrong"])
        .arg(&zip)
        .output()
        .unwrap();
    assert!(!wrong7.status.success(), "7z accepted a wrong password");

    // (c) Python's zipfile, with the password and with a wrong one.
    let py = run(Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1])\n\
             assert z.namelist() == [sys.argv[2]], z.namelist()\n\
             try:\n    z.read(sys.argv[2], pwd=b'wrong'); sys.exit('read with a wrong password')\n\
             except (RuntimeError, zipfile.BadZipFile): pass\n\
             sys.stdout.buffer.write(z.read(sys.argv[2], pwd=b'infected'))",
        )
        .arg(&zip)
        .arg(&sha256));
    assert!(py.stdout == data, "python's bytes");

    // Raw, for the bridge: the bytes as stored, as before.
    let raw = download(&app, &content, &bridge, "dl-raw-1", &dir.join("raw"));
    assert_eq!(raw.status, 200);
    assert!(raw.bytes() == data, "raw bytes");
    assert_eq!(raw.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        raw.header("content-disposition"),
        Some(format!("attachment; filename=\"{sha256}.bin\"").as_str())
    );
    assert_eq!(raw.header("x-content-type-options"), Some("nosniff"));
    let explicit = download(
        &app,
        &format!("{content}?format=raw"),
        &admin,
        "dl-raw-2",
        &dir.join("raw2"),
    );
    assert!(explicit.status == 200 && explicit.bytes() == data);

    // Each download is an audit row on the analysis, with its key and
    // request id.
    let rows = db.scalar(&format!(
        "SELECT string_agg(details->>'format' || ' ' || request_id || ' ' || \
                (actor = 'key:' || (details->>'key'))::text || ' ' || \
                (details->>'sha256' = '{sha256}')::text, ',' ORDER BY id) \
         FROM analysis_audit_log WHERE event = 'sample_downloaded'"
    ));
    assert_eq!(
        rows,
        "zip dl-zip-1 true true,raw dl-raw-1 true true,raw dl-raw-2 true true"
    );
    assert!(db
        .scalar(
            "SELECT string_agg(actor, ',' ORDER BY id) FROM analysis_audit_log \
             WHERE event = 'sample_downloaded'"
        )
        .starts_with("key:reader-"));

    // No audit row, no bytes: a download the log refuses is a 503.
    db.try_exec(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'refused'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON analysis_audit_log FOR EACH ROW \
         WHEN (NEW.event = 'sample_downloaded') EXECUTE FUNCTION refuse()",
    )
    .unwrap();
    for path in [content.clone(), format!("{content}?format=zip")] {
        let r = download(&app, &path, &reader, "x", &dir.join("refused"));
        assert_eq!(r.status, 503, "{path}");
        assert_eq!(r.json()["error"], "unavailable");
    }
    db.try_exec("DROP TRIGGER refuse ON analysis_audit_log")
        .unwrap();

    // A submitter sees only its own: another's sample does not exist for
    // it, exactly like a sample nobody submitted.
    let hidden = download(&app, &content, &other, "x", &dir.join("h"));
    assert_eq!(hidden.status, 404);
    let missing = download(
        &app,
        &format!("/v1/samples/{}/content", "0".repeat(64)),
        &other,
        "x",
        &dir.join("m"),
    );
    assert_eq!(missing.status, 404);
    assert_eq!(hidden.json(), {
        let mut m = missing.json();
        m["message"] = Value::String(format!("no sample {sha256}"));
        m
    });
    let own = download(
        &app,
        &format!("{content}?format=zip"),
        &submitter,
        "x",
        &dir.join("o"),
    );
    assert_eq!(own.status, 200);

    // Bad requests: JSON 400s, and nothing recorded.
    let before = db.scalar("SELECT count(*) FROM analysis_audit_log");
    for (path, code) in [
        ("/v1/samples/ABC/content".to_string(), "invalid_sha256"),
        (
            format!("/v1/samples/{}/content", sha256.to_uppercase()),
            "invalid_sha256",
        ),
        (format!("{content}?format=rar"), "invalid_format"),
        (format!("{content}?format=zip&format=raw"), "invalid_format"),
    ] {
        let r = download(&app, &path, &reader, "x", &dir.join("bad"));
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["error"], code, "{path}");
    }
    assert_eq!(db.scalar("SELECT count(*) FROM analysis_audit_log"), before);

    // TLP:RED: only its submitter and admin, in either form.
    let red_data = sample(300 << 10);
    let red = submit_tlp(&app, &submitter, &red_data, "red");
    let red_sha = red["sha256"].as_str().unwrap().to_string();
    let red_analysis = red["analysis_id"].as_str().unwrap().to_string();
    let red_content = format!("/v1/samples/{red_sha}/content");
    for path in [red_content.clone(), format!("{red_content}?format=zip")] {
        let r = download(&app, &path, &reader, "x", &dir.join("r"));
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"], "not_found");
    }
    for key in [&submitter, &admin] {
        let zip = dir.join("red.zip");
        let r = download(&app, &format!("{red_content}?format=zip"), key, "x", &zip);
        assert_eq!(r.status, 200);
        let out = run(Command::new("unzip")
            .args(["-p", "-P", "infected"])
            .arg(&zip)
            .arg(&red_sha));
        assert!(out.stdout == red_data, "red sample's bytes");
    }
    // The bridge detonates TLP:RED too: the raw bytes while the sample has
    // a live job, nothing once its jobs are done, never the zip.
    let r = download(&app, &red_content, &bridge, "bridge-red", &dir.join("br"));
    assert_eq!(r.status, 200);
    assert!(r.bytes() == red_data);
    assert_eq!(
        db.scalar("SELECT analysis_id FROM analysis_audit_log WHERE request_id = 'bridge-red'"),
        red_analysis
    );
    let r = download(
        &app,
        &format!("{red_content}?format=zip"),
        &bridge,
        "x",
        &dir.join("bz"),
    );
    assert_eq!(r.status, 404);
    let job = app.get_with_key(&format!("/v1/analyses/{red_analysis}"), &admin);
    let job_id = job.json()["jobs"][0]["id"].as_str().unwrap().to_string();
    let cancel = app.post_json(
        &admin,
        &format!("/v1/jobs/{job_id}/cancel"),
        serde_json::json!({}),
    );
    assert_eq!(cancel.status, 200, "{}", cancel.body);
    let r = download(&app, &red_content, &bridge, "x", &dir.join("bc"));
    assert_eq!(r.status, 404);
}

/// Proportional set size of a process, in KiB.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

#[test]
fn a_128_mib_zip_streams_in_flat_memory() {
    let db = TestDb::create("download_big");
    // One worker, so the one that answers is the one measured.
    let app = start("download-big", &db, "workers = 1\n", "");
    let submitter = app.new_key("submitter");
    let reader = app.new_key("reader");
    let data = sample(128 << 20);
    let sha256 = app.submit(&submitter, &data, &[]).json()["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let workers = app.worker_pids();
    assert_eq!(workers.len(), 1);
    let before = pss_kib(workers[0]);

    // Measured halfway, while the worker holds whatever it holds to
    // send the rest, and after.
    let zip = app.dir.join("big.zip");
    let mut halfway = 0;
    let d = download_pausing(
        &app,
        &format!("/v1/samples/{sha256}/content?format=zip"),
        &reader,
        "big",
        &zip,
        64 << 20,
        || halfway = pss_kib(workers[0]),
    );
    assert_eq!(d.status, 200);
    assert!(d.len > 128 << 20, "{} bytes", d.len);
    assert_eq!(app.worker_pids(), workers, "the worker was replaced");
    let after = pss_kib(workers[0]);
    for (when, pss) in [("halfway", halfway), ("after", after)] {
        assert!(
            pss > 0 && pss < before + (16 << 10),
            "worker PSS grew from {before} KiB to {pss} KiB ({when})"
        );
    }
    eprintln!("worker PSS {before} KiB -> {halfway} KiB halfway -> {after} KiB");

    let out = run(Command::new("sh")
        .arg("-c")
        .arg("unzip -p -P infected \"$1\" | sha256sum")
        .arg("sh")
        .arg(&zip));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next(),
        Some(sha256.as_str())
    );
}
