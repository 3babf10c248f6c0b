//! The sample store with `storage.backend = "s3"`, end to end against a
//! real S3 server (a single-node Garage on loopback, `common::s3`), the
//! real binary and a database of its own: a sample is in the bucket, at
//! its content address, when the 202 comes; the same bytes are not sent
//! twice; another node serves the bridge's download, the analyst's zip
//! and the static analysis from the bucket with nothing in its own
//! quarantine, and never serves an object whose bytes are not its name;
//! a store that goes away answers 503 with `Retry-After`, records nothing
//! half, and comes back without a restart; a purge deletes the object and
//! the same bytes store it again; and `check-config` never shows the
//! credentials.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::db::TestDb;
use common::s3::{sample_key, Garage};
use common::Appliance;
use serde_json::Value;

const PREFIX: &str = "samples";

/// An appliance on `db` whose samples go to `garage`'s bucket.
fn start(tag: &str, db: &TestDb, garage: &Garage, extra: &str) -> Appliance {
    Appliance::start_with_env(
        tag,
        "workers = 2\n",
        "",
        &format!(
            "[database]\nurl = \"{}\"\n{}\n{extra}",
            db.url(),
            garage.storage_toml(PREFIX)
        ),
        &mut common::free_port,
        &garage.env(),
    )
}

/// Random bytes (xorshift, seeded from the clock and `seed`).
fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut x = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64)
        ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Every file below `dir` (recursively).
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

fn store_ops(app: &Appliance, op: &str, outcome: &str) -> f64 {
    app.metric(&format!(
        "sandgnat_storage_operations_total{{operation=\"{op}\",outcome=\"{outcome}\"}}"
    ))
    .unwrap_or_else(|| panic!("no {op}/{outcome} in the metrics"))
}

/// A GET with the body kept as bytes.
fn get_bytes(app: &Appliance, path: &str, key: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = UnixStream::connect(&app.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: sandgnat\r\nConnection: close\r\nX-API-Key: {key}\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    // A body cut short may end in a reset: what came before it stands.
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

#[test]
fn a_sample_is_in_the_bucket_before_its_202_and_is_uploaded_once() {
    let garage = Garage::start("put");
    let db = TestDb::create("storage_put");
    let app = start(
        "storage-put",
        &db,
        &garage,
        "[intake]\nstatic_analysis_enabled = false\n[queue]\nrunners = 0\n",
    );
    let key = app.new_key("submitter");
    // Inline (scanned on the event loop), held in memory, and spooled
    // to disk and sent in parts (three of them).
    let sizes = [300usize, 200 << 10, (20 << 20) + 12345];
    let mut written = 0u64;
    let mut shas = Vec::new();
    for (i, size) in sizes.into_iter().enumerate() {
        let data = sample(size, i as u64);
        let r = app.accepted(&key, "", &data, &[]);
        let sha = r["sha256"].as_str().unwrap().to_string();
        // Nothing uploads after the answer: what is there now was there
        // before it.
        let stored = garage.get(&sample_key(PREFIX, &sha));
        assert!(
            stored.as_deref() == Some(&data[..]),
            "{size} bytes: the bucket holds {:?} bytes",
            stored.map(|s| s.len())
        );
        assert_eq!(
            db.scalar(&format!(
                "SELECT storage_path FROM samples WHERE sha256 = '{sha}'"
            )),
            format!("s3://{}/{}", garage.bucket, sample_key(PREFIX, &sha))
        );
        written += size as u64;
        shas.push((sha, data));
    }
    assert_eq!(store_ops(&app, "put", "ok"), 3.0);
    assert_eq!(store_ops(&app, "put", "error"), 0.0);
    assert_eq!(
        app.metric("sandgnat_storage_bytes_total{direction=\"written\"}"),
        Some(written as f64)
    );
    let heads_before = store_ops(&app, "head", "ok");

    // The same bytes again (the large one, and the inline one): found by
    // a HEAD, not sent again.
    for (sha, data) in [&shas[2], &shas[0]] {
        let r = app.accepted(&key, "", data, &[]);
        assert_eq!(r["sha256"], sha.as_str());
    }
    assert_eq!(store_ops(&app, "put", "ok"), 3.0, "a repeat was uploaded");
    assert_eq!(store_ops(&app, "head", "ok"), heads_before + 2.0);
    assert_eq!(db.scalar("SELECT count(*) FROM samples"), "3");
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "5");

    // The bucket holds the three samples and nothing else under the
    // prefix; this node's quarantine and spool hold nothing.
    let mut want: Vec<String> = shas.iter().map(|(s, _)| sample_key(PREFIX, s)).collect();
    want.sort();
    let keys: Vec<String> = garage
        .keys()
        .into_iter()
        .filter(|k| k != &format!("{PREFIX}/readyz-probe"))
        .collect();
    assert_eq!(keys, want);
    assert_eq!(
        files_under(&app.dir.join("quarantine")),
        Vec::<String>::new()
    );
    assert_eq!(files_under(&app.dir.join("spool")), Vec::<String>::new());

    // /readyz writes its probe to the bucket.
    let ready = app.get("/readyz").unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(garage.head(&format!("{PREFIX}/readyz-probe")), Some(0));
}

#[test]
fn another_node_serves_downloads_and_static_analysis_from_the_bucket() {
    let garage = Garage::start("nodes");
    let db = TestDb::create("storage_nodes");
    // A takes the submission and runs no jobs; B runs the static
    // analysis and serves the downloads.
    let a = start("storage-a", &db, &garage, "[queue]\nrunners = 0\n");
    let submitter = a.new_key("submitter");
    let reader = a.new_key("reader");
    let bridge = a.new_key("bridge");
    let b = start("storage-b", &db, &garage, "[queue]\nrunners = 1\n");

    let exe = std::fs::read("/bin/true").unwrap();
    let r = a.accepted(&submitter, "tlp=amber", &exe, &[("X-Filename", "true")]);
    let (sha, id) = (
        r["sha256"].as_str().unwrap().to_string(),
        r["analysis_id"].as_str().unwrap().to_string(),
    );
    let content = format!("/v1/samples/{sha}/content");

    // The bridge's raw download, through B.
    let (status, headers, body) = get_bytes(&b, &content, &bridge);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body == exe, "raw bytes through node B");
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-length" && v == &exe.len().to_string()));

    // The analyst's zip, through B, opened with the password.
    let (status, _, zip) = get_bytes(&b, &format!("{content}?format=zip"), &reader);
    assert_eq!(status, 200);
    let dir = b.dir.join("unzipped");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("s.zip"), &zip).unwrap();
    let out = Command::new("unzip")
        .args(["-q", "-P", "infected"])
        .arg(dir.join("s.zip"))
        .arg("-d")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(dir.join(&sha)).unwrap() == exe,
        "unzipped bytes"
    );

    // The static analysis, by B's runner, from the bucket.
    let mut seen = Value::Null;
    b.wait_until("the static result", Duration::from_secs(60), |n| {
        seen = n
            .get_with_key(&format!("/v1/analyses/{id}"), &reader)
            .json();
        seen["results"]["static"].is_object()
    });
    let st = &seen["results"]["static"];
    assert_eq!(st["size"], exe.len() as u64);
    assert_eq!(st["file_type"], "elf");
    assert_eq!(st["executable"]["format"], "elf", "{st}");

    // An object another holder of a key to the bucket changed is never
    // served whole: the raw body stops short of its length, the zip is
    // refused before its head.
    let mut forged = exe.clone();
    forged[100] ^= 0xff;
    garage.put(&sample_key(PREFIX, &sha), forged.clone());
    let (status, headers, body) = get_bytes(&b, &content, &bridge);
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse::<usize>().unwrap());
    assert_eq!((status, length), (200, Some(exe.len())));
    assert!(
        body.len() < exe.len(),
        "{} bytes of a forged object served",
        body.len()
    );
    let (status, _, body) = get_bytes(&b, &format!("{content}?format=zip"), &reader);
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("sample_unreadable"));
    garage.put(&sample_key(PREFIX, &sha), exe.clone());

    // Neither node's own disk holds the sample; B's runner's copy is gone.
    for node in [&a, &b] {
        assert_eq!(
            files_under(&node.dir.join("quarantine")),
            Vec::<String>::new()
        );
        assert_eq!(files_under(&node.dir.join("spool")), Vec::<String>::new());
    }
    // Four reads on B: raw, the zip's two passes (CRC, then data), and
    // the runner's copy.
    assert!(store_ops(&b, "get", "ok") >= 4.0);
    assert!(
        b.metric("sandgnat_storage_bytes_total{direction=\"read\"}")
            .unwrap()
            >= 4.0 * exe.len() as f64
    );
}

/// What one submission of the outage test got.
struct Tried {
    sha256: String,
    status: u16,
    retry_after: Option<String>,
    error: Option<String>,
    at: Instant,
}

#[test]
fn a_store_away_for_ten_seconds_answers_503_and_records_nothing_half() {
    let mut garage = Garage::start("outage");
    let db = TestDb::create("storage_outage");
    let app = Arc::new(start(
        "storage-outage",
        &db,
        &garage,
        "[intake]\nstatic_analysis_enabled = false\n[queue]\nrunners = 0\n",
    ));
    let key = app.new_key("submitter");

    // Submissions all along, each of new bytes, from two clients.
    let stop = Arc::new(AtomicBool::new(false));
    let tried: Arc<Mutex<Vec<Tried>>> = Arc::default();
    let clients: Vec<_> = (0..2u64)
        .map(|c| {
            let (app, key, stop, tried) = (app.clone(), key.clone(), stop.clone(), tried.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let data = sample(48 << 10, c << 32 | n);
                    let sha256 = {
                        use sha2::Digest;
                        hex::encode(sha2::Sha256::digest(&data))
                    };
                    let r = app.submit(&key, &data, &[]);
                    let error = (r.status != 202).then(|| r.json()["error"].to_string());
                    tried.lock().unwrap().push(Tried {
                        sha256,
                        status: r.status,
                        retry_after: r.header("retry-after").map(str::to_string),
                        error,
                        at: Instant::now(),
                    });
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        })
        .collect();
    let count = |status: u16| {
        tried
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.status == status)
            .count()
    };
    app.wait_until("submissions accepted", Duration::from_secs(30), |_| {
        count(202) >= 5
    });

    garage.stop();
    let down = Instant::now();
    app.wait_until(
        "a 503 while the store is away",
        Duration::from_secs(30),
        |_| count(503) >= 1,
    );
    // /readyz names the store, not the driver's words.
    let ready = app.get("/readyz").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.json()["check"], "store");
    assert_eq!(ready.header("retry-after"), Some("5"));
    for word in ["127.0.0.1", "garage", "Generic", "connect", &garage.bucket] {
        assert!(!ready.body.contains(word), "{word} in {}", ready.body);
    }
    // A large upload is refused before its body is read.
    let big = sample(3 << 20, 7);
    let t = Instant::now();
    let r = app.submit(&key, &big, &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // Ten seconds away, then back: no restart of the appliance.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down.elapsed()));
    garage.resume();
    let back = Instant::now();
    app.wait_until(
        "a 202 after the store is back",
        Duration::from_secs(30),
        |_| {
            tried
                .lock()
                .unwrap()
                .iter()
                .any(|t| t.status == 202 && t.at > back)
        },
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }

    let tried = tried.lock().unwrap();
    let accepted: Vec<&Tried> = tried.iter().filter(|t| t.status == 202).collect();
    let refused: Vec<&Tried> = tried.iter().filter(|t| t.status != 202).collect();
    assert!(!refused.is_empty());
    for t in &refused {
        assert_eq!(t.status, 503, "{:?}", t.error);
        assert_eq!(t.error.as_deref(), Some("\"unavailable\""));
        assert_eq!(t.retry_after.as_deref(), Some("5"));
    }
    // Every 202 has its sample row, its analysis, its job and its object;
    // a 503 left no row (each submission was of new bytes).
    for t in &accepted {
        let key = sample_key(PREFIX, &t.sha256);
        assert_eq!(garage.head(&key), Some(48 << 10), "{key}");
    }
    let recorded = |shas: &[&Tried], sql: &str| {
        let list = shas
            .iter()
            .map(|t| format!("'{}'", t.sha256))
            .collect::<Vec<_>>()
            .join(",");
        db.scalar(&sql.replace("$SHAS", &list))
    };
    assert_eq!(
        recorded(
            &accepted,
            "SELECT count(*) FROM samples WHERE sha256 IN ($SHAS)"
        ),
        accepted.len().to_string()
    );
    assert_eq!(
        recorded(
            &accepted,
            "SELECT count(DISTINCT a.id) FROM analyses a JOIN jobs j ON j.analysis_id = a.id \
             WHERE a.sample_sha256 IN ($SHAS) AND j.kind = 'detonate'"
        ),
        accepted.len().to_string()
    );
    assert_eq!(
        recorded(
            &refused,
            "SELECT count(*) FROM analyses WHERE sample_sha256 IN ($SHAS)"
        ),
        "0"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM analyses"),
        accepted.len().to_string()
    );
    assert!(store_ops(&app, "put", "error") + store_ops(&app, "head", "error") >= 1.0);
    let ready = app.get("/readyz").unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
}

#[test]
fn check_config_never_shows_the_credentials() {
    let dir = common::temp_dir("storage-cfg");
    let file = dir.join("s.toml");
    let secret = "c0ffee".repeat(10);
    let run = |toml: &str, env: &[(&str, &str)]| {
        std::fs::write(&file, toml).unwrap();
        let mut cmd = Command::new(common::BIN);
        cmd.arg("check-config").arg("--config").arg(&file);
        common::clean_env(&mut cmd);
        cmd.envs(env.iter().copied());
        cmd.output().unwrap()
    };
    let s3 = "[storage]\nbackend = \"s3\"\nendpoint = \"https://s3.example:9000\"\n\
              bucket = \"lab-samples\"\nregion = \"garage\"\nprefix = \"node/samples\"\n";
    let out = run(
        s3,
        &[
            ("AWS_ACCESS_KEY_ID", "GKfeedfacefeedfacefeedface"),
            ("AWS_SECRET_ACCESS_KEY", &secret),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: toml::Table = text.parse().unwrap();
    assert_eq!(parsed["storage"]["backend"].as_str(), Some("s3"));
    assert_eq!(parsed["storage"]["bucket"].as_str(), Some("lab-samples"));
    for hidden in [secret.as_str(), "GKfeedface"] {
        assert!(!text.contains(hidden), "{hidden} shown:\n{text}");
    }

    // Without them, it says where they belong.
    let out = run(s3, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("AWS_ACCESS_KEY_ID") && err.contains("/etc/sandgnat/env"),
        "{err}"
    );

    // Credentials in the file are refused, and not echoed.
    let out = run(&format!("{s3}secret_access_key = \"{secret}\"\n"), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secret_access_key") && !err.contains(&secret),
        "{err}"
    );
    let out = run(
        &s3.replace(
            "https://s3.example",
            &format!("https://GKfeedface:{secret}@s3.example"),
        ),
        &[("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("storage.endpoint") && !err.contains(&secret),
        "{err}"
    );
    // Plain HTTP only when asked for.
    let out = run(
        &s3.replace("https://", "http://"),
        &[("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_http"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_purge_deletes_the_object_and_the_same_bytes_store_it_again() {
    let garage = Garage::start("purge");
    let db = TestDb::create("storage_purge");
    // No jobs: nothing holds the bytes, so they may be purged at once.
    let app = start(
        "storage-purge",
        &db,
        &garage,
        "[queue]\nrunners = 0\n[debug]\nno_enqueue = true\nfault_injection = true\n",
    );
    let (submitter, admin) = (app.new_key("submitter"), app.new_key("admin"));
    let data = sample(300 << 10, 11);
    let sha = app.accepted(&submitter, "", &data, &[])["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let key = sample_key(PREFIX, &sha);
    assert_eq!(garage.head(&key), Some(data.len() as u64));

    let content = format!("/v1/samples/{sha}/content");
    let r =
        common::request_unix(&app.socket, "DELETE", &content, &[("X-API-Key", &admin)]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["purged_now"], true);
    assert_eq!(garage.head(&key), None, "the object is still in the bucket");
    assert_eq!(store_ops(&app, "delete", "ok"), 1.0);
    assert_eq!(
        db.scalar(&format!(
            "SELECT content_purged FROM samples WHERE sha256 = '{sha}'"
        )),
        "t"
    );
    let (status, _, _) = get_bytes(&app, &content, &admin);
    assert_eq!(status, 410);

    // Submitted again: uploaded again (a HEAD finds nothing), and kept.
    let puts = store_ops(&app, "put", "ok");
    app.accepted(&submitter, "", &data, &[]);
    assert_eq!(store_ops(&app, "put", "ok"), puts + 1.0);
    assert!(garage.get(&key).as_deref() == Some(&data[..]));
    assert_eq!(
        db.scalar(&format!(
            "SELECT content_purged FROM samples WHERE sha256 = '{sha}'"
        )),
        "f"
    );
    let (status, _, body) = get_bytes(&app, &content, &admin);
    assert!(status == 200 && body == data);
}
