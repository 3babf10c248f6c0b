//! `sandgnat submit` and `sandgnat lookup` end to end: the real client
//! binary against the real appliance, through its TLS front end, trusting
//! only the self-signed certificate the appliance made in its state
//! directory; a database of its own per test.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::db::{Relay, TestDb};
use common::{clean_env, temp_dir, Appliance, BIN};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SEC: Duration = Duration::from_secs(1);
/// Samples above this are refused by the appliances here.
const LIMIT: usize = 4096;

fn start(tag: &str, db_url: &str) -> Appliance {
    Appliance::start(
        tag,
        "workers = 2\n",
        // No runners and no static analysis: an analysis finishes only
        // when the test, as the bridge, completes its detonation.
        &format!(
            "[database]\nurl = \"{db_url}\"\n\
             [intake]\nmax_sample_bytes = {LIMIT}\nstatic_analysis_enabled = false\n\
             [queue]\nrunners = 0\n"
        ),
    )
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `sandgnat <sub> --url https://... --cacert <the appliance's cert>`
/// with `key` in the environment.
fn client(app: &Appliance, key: &str, sub: &str) -> Command {
    client_via(&app.tls, app, key, sub)
}

/// [`client`], reaching the appliance at `addr` (a relay in front of it).
fn client_via(addr: &str, app: &Appliance, key: &str, sub: &str) -> Command {
    let mut cmd = Command::new(BIN);
    clean_env(&mut cmd);
    cmd.arg(sub)
        .arg("--url")
        .arg(format!("https://{addr}"))
        .arg("--cacert")
        .arg(app.dir.join("certs/self-signed.pem"))
        .env("SANDGNAT_API_KEY", key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs it to the end (bounded), with `input` on standard input.
fn run(mut cmd: Command, input: Option<&[u8]>) -> Output {
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("start the client");
    if let Some(data) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(data).unwrap();
    }
    let deadline = Instant::now() + 60 * SEC;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the client did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

#[test]
fn a_tree_standard_input_refusals_and_lookup() {
    let db = TestDb::create("client");
    let app = start("client", &db.url());
    let key = app.new_key("submitter");

    // A nested tree of distinct samples, larger than one chunk's worth
    // for some, and a link out of the tree that must not be followed.
    let tree = temp_dir("client-tree");
    let outside = tree.join("outside.txt");
    write(&outside, b"not part of the collection");
    let root = tree.join("samples");
    let mut files: HashMap<PathBuf, Vec<u8>> = HashMap::new();
    for (i, rel) in ["a.bin", "x/b.bin", "x/y/c.bin", "x/y/z/d.bin", "w/e.bin"]
        .iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..(100 + i * 900))
            .map(|n| (n * 31 + i * 7) as u8)
            .collect();
        write(&root.join(rel), &data);
        files.insert(root.join(rel), data);
    }
    std::os::unix::fs::symlink(&outside, root.join("x/escape")).unwrap();

    let mut cmd = client(&app, &key, "submit");
    cmd.args([
        "--json", "--jobs", "3", "--tag", "batch-1", "--tlp", "green",
    ])
    .arg(&root);
    let out = run(cmd, None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("escape: a symbolic link out of the tree"),
        "{stderr}"
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), files.len(), "{lines:?}");
    for line in &lines {
        let path = PathBuf::from(line["file"].as_str().unwrap());
        let data = &files[&path];
        assert_eq!(line["status"], "accepted", "{line}");
        assert_eq!(line["sha256"], sha256(data), "{line}");
        assert_eq!(line["size"], data.len(), "{line}");
        assert!(line["yara"].is_array(), "{line}");
        let id = line["analysis_id"].as_str().unwrap();
        let a = app.get_with_key(&format!("/v1/analyses/{id}"), &key).json();
        assert_eq!(a["tags"], json!(["batch-1"]), "{a}");
        assert_eq!(a["tlp"], "green", "{a}");
        assert_eq!(a["filename"], path.file_name().unwrap().to_str().unwrap());
    }
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "5");

    // Standard input, named.
    let piped = b"a sample that came through a pipe".to_vec();
    let mut cmd = client(&app, &key, "submit");
    cmd.args(["--json", "--filename", "piped.bin", "-"]);
    let out = run(cmd, Some(&piped));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["file"], "-");
    assert_eq!(lines[0]["sha256"], sha256(&piped));
    let id = lines[0]["analysis_id"].as_str().unwrap();
    let a = app.get_with_key(&format!("/v1/analyses/{id}"), &key).json();
    assert_eq!(a["filename"], "piped.bin", "{a}");

    // A file over the limit beside one that is fine: exit 1, the
    // server's reason printed, the other one accepted.
    let mixed = tree.join("mixed");
    write(&mixed.join("big.bin"), &vec![7u8; LIMIT * 3]);
    write(&mixed.join("small.bin"), b"small and fine");
    let mut cmd = client(&app, &key, "submit");
    cmd.arg(&mixed);
    let out = run(cmd, None);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(stderr.contains("big.bin: 413 sample_too_large"), "{stderr}");
    assert!(
        stdout.contains("accepted") && stdout.contains("small.bin"),
        "{stdout}"
    );
    assert!(!stdout.contains("big.bin"), "{stdout}");

    // A key the server does not know: exit 2, nothing more tried.
    let mut cmd = client(&app, "sg_not-a-real-key", "submit");
    cmd.arg(&root);
    let out = run(cmd, None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the server refused the key (401"),
        "{stderr}"
    );
    // No key at all, and a key on the command line: usage errors.
    let mut cmd = client(&app, "", "submit");
    cmd.env_remove("SANDGNAT_API_KEY").arg(&root);
    let out = run(cmd, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("SANDGNAT_API_KEY"));
    let mut cmd = client(&app, &key, "submit");
    cmd.args(["--key", "sg_x"]).arg(&root);
    let out = run(cmd, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--key is refused"));
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "7");

    // Without --cacert the self-signed certificate is not trusted.
    let mut cmd = Command::new(BIN);
    clean_env(&mut cmd);
    cmd.args(["submit", "--url", &format!("https://{}", app.tls)])
        .arg(&root)
        .env("SANDGNAT_API_KEY", &key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = run(cmd, None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("TLS with"), "{stderr}");

    // Nobody listening: retried (nothing was sent), then exit 2.
    let mut cmd = Command::new(BIN);
    clean_env(&mut cmd);
    cmd.args(["submit", "--retries", "1", "--url"])
        .arg(format!("https://127.0.0.1:{}", common::free_port()))
        .arg("--cacert")
        .arg(app.dir.join("certs/self-signed.pem"))
        .arg(root.join("a.bin"))
        .env("SANDGNAT_API_KEY", &key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = run(cmd, None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("retry") && stderr.contains("cannot connect"),
        "{stderr}"
    );
    assert!(stderr.contains("gave up after 2 tries"), "{stderr}");

    // Lookup by md5 prints the sha256; --json is the server's document;
    // an unknown sample is exit 1. The key file is read, trimmed.
    let data = &files[&root.join("x/b.bin")];
    let md5 = hex::encode(md5::Md5::digest(data));
    let key_file = tree.join("key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let mut cmd = client(&app, "", "lookup");
    cmd.env_remove("SANDGNAT_API_KEY")
        .arg("--key-file")
        .arg(&key_file)
        .arg(&md5);
    let out = run(cmd, None);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains(&sha256(data)), "{stdout}");
    assert!(stdout.contains("b.bin"), "{stdout}");
    let mut cmd = client(&app, &key, "lookup");
    cmd.args(["--json", &md5]);
    let out = run(cmd, None);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["sha256"], sha256(data));
    assert_eq!(doc["analyses"].as_array().unwrap().len(), 1);
    let mut cmd = client(&app, &key, "lookup");
    cmd.arg("0".repeat(64));
    let out = run(cmd, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no sample"),
        "{}",
        text(&out.stderr)
    );
    let mut cmd = client(&app, &key, "lookup");
    cmd.arg("not-a-hash");
    assert_eq!(run(cmd, None).status.code(), Some(2));

    let _ = std::fs::remove_dir_all(&tree);
}

/// What the bridge does for a detonation: claim it (waiting for it to be
/// queued) and complete it.
fn detonate(app: &Appliance, bridge: &str, analysis_id: &str) {
    let r = app.post_json(
        bridge,
        "/v1/queues/analysis/claim",
        json!({"max_jobs": 1, "lease_seconds": 60, "wait_seconds": 20}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let job = r.json()["jobs"][0].clone();
    assert_eq!(job["analysis_id"], analysis_id, "{job}");
    let done = app.post_json(
        bridge,
        &format!("/v1/jobs/{}/complete", job["id"].as_str().unwrap()),
        json!({"lease_token": job["lease_token"], "result": {"verdict": "clean"}}),
    );
    assert_eq!(done.status, 200, "{}", done.body);
}

/// Standard error's lines as they come.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads lines until one contains `what`; returns everything read.
fn expect_line(rx: &mpsc::Receiver<String>, what: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut seen = String::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen += &line;
                seen.push('\n');
                if line.contains(what) {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {what:?} within {within:?}; got:\n{seen}");
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the client did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn wait_prints_the_finished_analysis() {
    let db = TestDb::create("client_wait");
    let app = start("client-wait", &db.url());
    let key = app.new_key("submitter");
    let bridge = app.new_key("bridge");
    let dir = temp_dir("client-wait");
    let sample = dir.join("waited.bin");
    std::fs::write(&sample, b"a sample whose analysis is waited for").unwrap();

    let mut cmd = client(&app, &key, "submit");
    cmd.args(["--wait", "--json"]).arg(&sample);
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    // Accepted and queued: the bridge picks up the detonation now.
    let id = {
        let mut found = String::new();
        let deadline = Instant::now() + 20 * SEC;
        while Instant::now() < deadline {
            found = db.scalar("SELECT coalesce(max(id::text), '') FROM analyses");
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!found.is_empty(), "no analysis recorded");
        found
    };
    // The client is polling and has printed nothing for scripts yet.
    detonate(&app, &bridge, &id);
    let status = wait_exit(&mut child, 30 * SEC);
    let out = std::io::read_to_string(stdout).unwrap();
    assert!(status.success(), "{status}; {out}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["analysis_id"], id.as_str());
    assert_eq!(lines[0]["status"], "completed", "{out}");
    assert_eq!(lines[0]["analysis"]["status"], "completed", "{out}");
    assert_eq!(
        lines[0]["analysis"]["results"]["detonate"]["verdict"], "clean",
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_database_outage_is_retried_until_the_sample_is_accepted() {
    let db = TestDb::create("client_outage");
    let relay = Relay::start("127.0.0.1:5432");
    let app = start("client-outage", &db.url_via(&relay.addr));
    let key = app.new_key("submitter");
    let dir = temp_dir("client-outage");
    let sample = dir.join("during-outage.bin");
    let data = b"submitted while the database is away".to_vec();
    std::fs::write(&sample, &data).unwrap();

    relay.cut();
    let mut cmd = client(&app, &key, "submit");
    cmd.arg("--json").arg(&sample);
    let mut child = cmd.spawn().unwrap();
    let stderr = lines_of(child.stderr.take().unwrap());
    let seen = expect_line(&stderr, "retry", 20 * SEC);
    assert!(seen.contains("503 unavailable"), "{seen}");
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "0");

    relay.restore();
    let status = wait_exit(&mut child, 90 * SEC);
    let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(status.success(), "{status}; {out}");
    let line: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["status"], "accepted");
    assert_eq!(line["sha256"], sha256(&data));
    // Retried until accepted, and recorded once.
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM analyses WHERE sample_sha256 = '{}'",
            sha256(&data)
        )),
        "1"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unconfirmed_commit_is_retried_and_answered_with_the_analysis_that_committed() {
    let db = TestDb::create("client_unconfirmed");
    let app = Appliance::start(
        "client-unconfirmed",
        "workers = 1\n",
        &format!(
            "[database]\nurl = \"{}\"\nrecord_timeout_ms = 1000\n[queue]\nrunners = 0\n",
            db.url()
        ),
    );
    let key = app.new_key("submitter");
    let dir = temp_dir("client-unconfirmed");
    let sample = dir.join("late.bin");
    let data = b"recorded after its deadline".to_vec();
    std::fs::write(&sample, &data).unwrap();

    // The statement's foreign-key checks wait for the key's row: the
    // submission is sent, outlives its deadline (503 unconfirmed), and
    // commits once released.
    let held = db.hold("SELECT id FROM api_keys FOR UPDATE");
    let mut cmd = client(&app, &key, "submit");
    cmd.arg("--json").arg(&sample);
    let mut child = cmd.spawn().unwrap();
    let stderr = lines_of(child.stderr.take().unwrap());
    let seen = expect_line(&stderr, "retry", 20 * SEC);
    assert!(seen.contains("503 unconfirmed"), "{seen}");
    held.release();

    let status = wait_exit(&mut child, 30 * SEC);
    let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(status.success(), "{status}; {out}");
    let line: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["status"], "accepted", "{out}");
    // The retry got the analysis its first try made: one, not two.
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "1");
    assert_eq!(
        line["analysis_id"].as_str(),
        Some(db.scalar("SELECT id FROM analyses").as_str())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls `cond` every 20 ms until it holds; panics after `within`.
fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_connection_broken_before_the_answer_is_retried_and_recorded_once() {
    let db = TestDb::create("client_broken");
    let app = start("client-broken", &db.url());
    let key = app.new_key("submitter");
    let dir = temp_dir("client-broken");
    let sample = dir.join("cut.bin");
    let data = b"its first answer never came back".to_vec();
    std::fs::write(&sample, &data).unwrap();
    // The client reaches the appliance through a relay that the test
    // cuts, as a reload or a proxy ends a connection.
    let relay = Relay::start(Box::leak(app.tls.clone().into_boxed_str()));

    // The submission's statement waits for the key's row: the request is
    // all at the appliance, its answer not yet sent.
    let held = db.hold("SELECT id FROM api_keys FOR UPDATE");
    let mut cmd = client_via(&relay.addr, &app, &key, "submit");
    cmd.arg("--json").arg(&sample);
    let mut child = cmd.spawn().unwrap();
    let stderr = lines_of(child.stderr.take().unwrap());
    wait_for("the submission waits for its commit", 20 * SEC, || {
        db.scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE wait_event_type = 'Lock' AND query LIKE 'WITH held AS%'",
        ) == "1"
    });
    relay.cut();
    let seen = expect_line(&stderr, "retry", 20 * SEC);
    assert!(seen.contains("broke after the request was sent"), "{seen}");

    // The first try commits with nobody to answer; its retry comes in
    // once the relay is back, with the same Idempotency-Key.
    held.release();
    wait_for("the first try committed", 20 * SEC, || {
        db.scalar("SELECT count(*) FROM analyses") == "1"
    });
    relay.restore();
    let status = wait_exit(&mut child, 60 * SEC);
    let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(status.success(), "{status}; {out}");
    let line: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["status"], "accepted", "{out}");
    assert_eq!(line["sha256"], sha256(&data));
    // One analysis, the first try's, not two.
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "1");
    assert_eq!(
        line["analysis_id"].as_str(),
        Some(db.scalar("SELECT id FROM analyses").as_str())
    );
    let _ = std::fs::remove_dir_all(&dir);
}
