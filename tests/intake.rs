//! Sample intake end to end: the real binary, a real database of its own,
//! real libyara, and the quarantine on disk.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::db::{Relay, TestDb};
use common::{request_unix_body, Appliance};

const SEC: Duration = Duration::from_secs(1);
const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
const EICAR_SHA256: &str = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";

fn start(tag: &str, db_url: &str, intake: &str) -> Appliance {
    Appliance::start(
        tag,
        "workers = 2\n",
        // No job runners: these tests look at what intake alone records.
        &format!("[database]\nurl = \"{db_url}\"\n[intake]\n{intake}\n[queue]\nrunners = 0\n"),
    )
}

fn json(r: &common::Response) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", r.body))
}

fn multipart(fields: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "sandgnat-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, filename, data) in fields {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\""
        )
        .unwrap();
        if let Some(f) = filename {
            write!(body, "; filename=\"{f}\"").unwrap();
        }
        write!(body, "\r\n\r\n").unwrap();
        body.extend_from_slice(data);
        write!(body, "\r\n").unwrap();
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn spool_files(app: &Appliance) -> usize {
    std::fs::read_dir(app.dir.join("spool"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn eicar_raw_and_multipart_are_scanned_stored_and_recorded() {
    let db = TestDb::create("eicar");
    let app = start("eicar", &db.url(), "");
    let key = app.new_key("submitter");

    let r = app.submit(
        &key,
        EICAR,
        &[("X-Filename", "eicar.com"), ("X-Request-Id", "req-eicar-1")],
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let v = json(&r);
    assert_eq!(v["sha256"], EICAR_SHA256);
    assert_eq!(v["md5"], "44d88612fea8a8f36de82e1278abb02f");
    assert_eq!(v["sha1"], "3395856ce81f2b7382dee72602f798b642f14140");
    assert_eq!(v["size"], EICAR.len());
    assert_eq!(v["filename"], "eicar.com");
    let rule = &v["yara"][0];
    assert_eq!(rule["rule"], "EICAR_Test_File");
    assert_eq!(rule["strings"][0]["offsets"][0], 0);
    let first = v["analysis_id"].as_str().unwrap().to_string();
    assert_eq!(v["status_url"], format!("/v1/analyses/{first}"));

    let (ct, body) = multipart(&[
        ("file", Some("again.com"), EICAR),
        ("tags", None, b"apt,loader"),
        ("tlp", None, b"red"),
        ("priority", None, b"5"),
    ]);
    let r = request_unix_body(
        &app.socket,
        "POST",
        "/v1/submit",
        &[("X-API-Key", &key), ("Content-Type", &ct)],
        Some(&body),
    )
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let v = json(&r);
    assert_eq!(v["yara"][0]["rule"], "EICAR_Test_File");
    assert_eq!(v["filename"], "again.com");

    // The same bytes twice: one sample, two analyses.
    assert_eq!(db.scalar("SELECT count(*) FROM samples"), "1");
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "2");
    assert_eq!(db.scalar("SELECT count(*) FROM analysis_audit_log"), "4");
    assert_eq!(
        db.scalar(&format!("SELECT string_agg(event, ',' ORDER BY id) FROM analysis_audit_log WHERE analysis_id = '{first}'")),
        "submitted,scanned"
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT request_id FROM analysis_audit_log WHERE analysis_id = '{first}' LIMIT 1"
        )),
        "req-eicar-1"
    );
    assert_eq!(db.scalar("SELECT tlp || ' ' || array_to_string(tags, ',') FROM analyses WHERE filename = 'again.com'"), "red apt,loader");
    // A sample seen again moves its last_seen, and only that.
    db.scalar("UPDATE samples SET first_seen = now() - interval '1 hour', last_seen = now() - interval '1 hour' RETURNING 1");
    let r = app.submit(&key, EICAR, &[("X-Filename", "third.com")]);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        db.scalar("SELECT first_seen < now() - interval '59 minutes' AND last_seen > now() - interval '1 minute' FROM samples"),
        "t"
    );
    // Each submission committed its jobs with it: a detonation for the
    // bridge and static analysis (on by default), with the priority given.
    assert_eq!(
        db.scalar(&format!(
            "SELECT string_agg(queue || ':' || kind || ':' || state, ',' ORDER BY queue)
               FROM jobs WHERE analysis_id = '{first}'"
        )),
        "analysis:detonate:available,static:static:available"
    );
    assert_eq!(
        db.scalar("SELECT DISTINCT j.priority FROM jobs j JOIN analyses a ON a.id = j.analysis_id WHERE a.filename = 'again.com'"),
        "5"
    );

    let stored = app
        .dir
        .join("quarantine")
        .join(&EICAR_SHA256[..2])
        .join(&EICAR_SHA256[2..4])
        .join(EICAR_SHA256);
    let meta = std::fs::metadata(&stored).expect("sample in quarantine");
    assert_eq!(meta.permissions().mode() & 0o777, 0o440);
    assert_eq!(std::fs::read(&stored).unwrap(), EICAR);
    assert_eq!(spool_files(&app), 0);

    let reader = app.new_key("reader");
    let r = app.get_with_key(&format!("/v1/analyses/{first}"), &reader);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = json(&r);
    assert_eq!(v["status"], "queued");
    assert_eq!(v["sha256"], EICAR_SHA256);
    assert_eq!(v["yara"][0]["rule"], "EICAR_Test_File");

    // The seed's route still takes submissions.
    let r = request_unix_body(
        &app.socket,
        "POST",
        "/submit",
        &[("X-API-Key", &key)],
        Some(b"seed route sample"),
    )
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let db = TestDb::create("badinput");
    let app = start("badinput", &db.url(), "max_sample_bytes = 1024\n");
    let key = app.new_key("submitter");

    let r = app.submit(&key, &vec![b'a'; 4096], &[]);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(json(&r)["error"], "sample_too_large");

    let r = app.submit(&key, b"", &[]);
    assert_eq!(r.status, 400);
    assert_eq!(json(&r)["error"], "empty_sample");

    let (ct, body) = multipart(&[("tags", None, b"x")]);
    let r = request_unix_body(
        &app.socket,
        "POST",
        "/v1/submit",
        &[("X-API-Key", &key), ("Content-Type", &ct)],
        Some(&body),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(json(&r)["error"], "missing_file");

    let r = request_unix_body(
        &app.socket,
        "POST",
        "/v1/submit",
        &[
            ("X-API-Key", &key),
            ("Content-Type", "multipart/form-data; boundary=zz"),
        ],
        Some(b"--zz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nunterminated"),
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(json(&r)["error"], "invalid_multipart");

    let r = request_unix_body(
        &app.socket,
        "POST",
        "/v1/submit",
        &[("X-API-Key", &key), ("Content-Type", "multipart/form-data")],
        Some(b"x"),
    )
    .unwrap();
    assert_eq!(r.status, 400);

    let r = app.submit(&key, b"data", &[]);
    assert_eq!(r.status, 202);
    let r = request_unix_body(
        &app.socket,
        "POST",
        "/v1/submit?tlp=purple",
        &[("X-API-Key", &key)],
        Some(b"data"),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(json(&r)["message"].as_str().unwrap().contains("tlp"));

    let r = app.get_with_key("/v1/analyses/not-a-uuid", &app.new_key("reader"));
    assert_eq!(r.status, 400);
    assert_eq!(json(&r)["error"], "invalid_id");

    // Only the one good submission left a trace.
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "1");
    assert_eq!(spool_files(&app), 0);
}

#[test]
fn every_role_against_every_route() {
    let db = TestDb::create("roles");
    let app = start("roles", &db.url(), "");
    let keys: Vec<(&str, String)> = ["submitter", "reader", "bridge", "admin"]
        .iter()
        .map(|r| (*r, app.new_key(r)))
        .collect();
    let submitter = &keys[0].1;
    let id = json(&app.submit(submitter, b"role matrix sample", &[]))["analysis_id"]
        .as_str()
        .unwrap()
        .to_string();

    let expect = |role: &str, route: &str| -> u16 {
        match (role, route) {
            ("submitter" | "admin", "submit") => 202,
            // Bridge keys read too (the read rule, auth::Visibility).
            (_, "analysis") => 200,
            ("admin", "audit") => 200,
            ("bridge" | "admin", "claim") => 200,
            // Every role downloads what it may read (tests/download.rs).
            (_, "content") => 200,
            _ => 403,
        }
    };
    for (role, key) in &keys {
        let r = app.submit(key, b"role matrix sample", &[]);
        assert_eq!(
            r.status,
            expect(role, "submit"),
            "{role} submit: {}",
            r.body
        );
        let r = app.get_with_key(&format!("/v1/analyses/{id}"), key);
        assert_eq!(r.status, expect(role, "analysis"), "{role} analysis");
        let r = request_unix_body(
            &app.socket,
            "POST",
            "/v1/queues/analysis/claim",
            &[("X-API-Key", key)],
            Some(b"{}"),
        )
        .unwrap();
        assert_eq!(r.status, expect(role, "claim"), "{role} claim: {}", r.body);
        let sha = json(&app.submit(submitter, b"role matrix sample", &[]))["sha256"]
            .as_str()
            .unwrap()
            .to_string();
        let r = app.get_with_key(&format!("/v1/samples/{sha}/content"), key);
        assert_eq!(r.status, expect(role, "content"), "{role} content");
        let r = app.get_with_key(&format!("/v1/audit?analysis_id={id}"), key);
        assert_eq!(r.status, expect(role, "audit"), "{role} audit");
        if r.status == 200 {
            let v = json(&r);
            assert_eq!(v["entries"][0]["event"], "submitted");
            assert_eq!(v["entries"][1]["event"], "scanned");
        } else {
            assert_eq!(json(&r)["error"], "forbidden");
        }
    }
    for route in [
        "/v1/analyses/".to_string() + &id,
        format!("/v1/audit?analysis_id={id}"),
    ] {
        let r = app.get(&route).unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(json(&r)["error"], "unauthorized");
        assert_eq!(app.get_with_key(&route, "sgk_not_a_key").status, 401);
    }
    let r = request_unix_body(&app.socket, "POST", "/v1/submit", &[], Some(b"x")).unwrap();
    assert_eq!(r.status, 401);
}

#[test]
fn a_revoked_key_stops_working_within_five_seconds() {
    let db = TestDb::create("revoke");
    let app = start("revoke", &db.url(), "");
    let key = app.new_key("submitter");
    assert_eq!(app.submit(&key, b"before revocation", &[]).status, 202);
    let listed = String::from_utf8(app.keys(&["list"]).stdout).unwrap();
    assert!(!listed.contains(&key), "list never shows the secret");
    let name = listed
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let revoked_at = Instant::now();
    assert!(app.keys(&["revoke", &name]).status.success());
    // Every worker, not just one: ask until several answers in a row agree.
    app.wait_until("revocation everywhere", 6 * SEC, |a| {
        (0..6).all(|_| a.submit(&key, b"after", &[]).status == 401)
    });
    assert!(revoked_at.elapsed() < 5 * SEC, "{:?}", revoked_at.elapsed());
    assert!(!app.keys(&["revoke", "no-such-key"]).status.success());
}

#[test]
fn the_audit_log_is_append_only() {
    let db = TestDb::create("appendonly");
    let app = start("appendonly", &db.url(), "");
    let key = app.new_key("submitter");
    assert_eq!(app.submit(&key, b"audit me", &[]).status, 202);
    for sql in [
        "UPDATE analysis_audit_log SET event = 'forged'",
        "DELETE FROM analysis_audit_log",
        "TRUNCATE analysis_audit_log CASCADE",
    ] {
        let err = db.try_exec(sql).expect_err(sql);
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(db.scalar("SELECT count(*) FROM analysis_audit_log"), "2");
}

#[test]
fn database_outage_answers_503_fast_and_recovers_without_restart() {
    let db = TestDb::create("outage");
    let relay = Relay::start("127.0.0.1:5432");
    let app = start("outage", &db.url_via(&relay.addr), "");
    let key = app.new_key("submitter");
    assert_eq!(
        app.submit(&key, b"while the database is up", &[]).status,
        202
    );

    relay.cut();
    let t = Instant::now();
    let r = app.submit(&key, b"while the database is down", &[]);
    assert!(t.elapsed() < 2 * SEC + SEC / 2, "took {:?}", t.elapsed());
    assert_eq!(r.status, 503, "{}", r.body);
    // `unconfirmed` when the recorder sent the statement on a pooled
    // connection the cut had already broken: from the client's side of a
    // lost connection, the commit may have happened.
    let code = json(&r)["error"].as_str().unwrap_or_default().to_string();
    assert!(code == "unavailable" || code == "unconfirmed", "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert_eq!(app.get("/healthz").unwrap().status, 200);
    let r = app.get("/readyz").unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(json(&r)["check"], "database");
    assert_eq!(spool_files(&app), 0);

    relay.restore();
    app.wait_until("submissions succeed again", 15 * SEC, |a| {
        a.submit(&key, b"after the database came back", &[]).status == 202
    });
    assert_eq!(
        db.scalar("SELECT count(*) FROM analyses WHERE filename IS NOT NULL"),
        "2"
    );
    // Every worker, not only the one that took the submission.
    app.wait_until("every worker ready again", 5 * SEC, |a| {
        (0..8).all(|_| a.get("/readyz").is_ok_and(|r| r.status == 200))
    });
}

#[test]
fn a_database_that_stops_answering_costs_a_bounded_wait_not_a_hang() {
    let db = TestDb::create("stall");
    let relay = Relay::start("127.0.0.1:5432");
    // One worker, so the key the first submission proved is known where
    // the second one lands, and the wait is the record's own.
    let app = Appliance::start(
        "stall",
        "workers = 1\n",
        &format!(
            "[database]\nurl = \"{}\"\nrecord_timeout_ms = 1000\n[queue]\nrunners = 0\n",
            db.url_via(&relay.addr)
        ),
    );
    let key = app.new_key("submitter");
    assert_eq!(app.submit(&key, b"before the stall", &[]).status, 202);

    // Bytes vanish, nothing is reset: only the deadline ends the wait.
    relay.stall();
    let t = Instant::now();
    let r = app.submit(&key, b"during the stall", &[]);
    let took = t.elapsed();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(json(&r)["error"], "unconfirmed");
    assert!(r.header("retry-after").is_some());
    assert!(
        json(&r)["message"]
            .as_str()
            .unwrap()
            .contains("resubmitting"),
        "{}",
        r.body
    );
    assert!(took >= SEC && took < 4 * SEC, "took {took:?}");
    assert_eq!(app.get("/healthz").unwrap().status, 200);

    relay.restore();
    app.wait_until("submissions succeed again", 15 * SEC, |a| {
        a.submit(&key, b"after the stall", &[]).status == 202
    });
}

#[test]
fn client_disconnect_mid_upload_records_nothing() {
    let db = TestDb::create("disconnect");
    let app = start("disconnect", &db.url(), "");
    let key = app.new_key("submitter");
    let mut s = std::os::unix::net::UnixStream::connect(&app.socket).unwrap();
    write!(
        s,
        "POST /v1/submit HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 10000000\r\n\r\n"
    )
    .unwrap();
    // Past intake.memory_sample_bytes (1 MiB), so the upload has spilled
    // to a spool file that must go.
    s.write_all(&vec![b'z'; 2_000_000]).unwrap();
    app.wait_until("upload under way", 5 * SEC, |a| spool_files(a) == 1);
    drop(s);
    app.wait_until("spool file removed", 5 * SEC, |a| spool_files(a) == 0);
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "0");
    assert_eq!(db.scalar("SELECT count(*) FROM samples"), "0");
}

#[test]
fn a_full_spool_answers_507_and_records_nothing() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small spool needs root");
        return;
    }
    let db = TestDb::create("diskfull");
    let app = start("diskfull", &db.url(), "");
    let key = app.new_key("submitter");
    let spool = app.dir.join("spool");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0777", "tmpfs"])
        .arg(&spool)
        .status()
        .unwrap();
    assert!(mounted.success(), "cannot mount a tmpfs for the spool");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(spool.clone());
    // A worker's Landlock rules name the spool directory it saw at boot,
    // not a file system mounted over it later: new workers see the mount.
    let old = app.worker_pids();
    app.signal(libc::SIGHUP);
    app.wait_until("workers replaced", 20 * SEC, |a| {
        let now = a.worker_pids();
        now.len() == old.len() && now.iter().all(|p| !old.contains(p))
    });
    let r = app.submit(&key, &vec![b'q'; 1 << 20], &[]);
    assert_eq!(r.status, 507, "{}", r.body);
    assert_eq!(json(&r)["error"], "insufficient_storage");
    assert_eq!(spool_files(&app), 0);
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "0");
}

/// Slow uploads, more of them than a worker's blocking pool has threads
/// (tokio's default, 512), each spooled and then left waiting for its
/// client: between chunks they hold no thread, so a submission whose
/// writes need the pool still gets its 202 while all of them are open.
#[test]
fn trickling_uploads_leave_the_blocking_pool_to_other_requests() {
    const SLOW: usize = 520;
    let db = TestDb::create("trickle");
    // No memory for samples: every upload spools from its first byte. (And
    // each announces less than intake.memory_sample_bytes, so none waits
    // for the database ping that a large upload gets before its body.)
    let app = Appliance::start(
        "trickle",
        "workers = 1\nworker_connections = 1000\n",
        &format!(
            "[database]\nurl = \"{}\"\n[intake]\nmemory_budget_bytes = 0\n[queue]\nrunners = 0\n",
            db.url()
        ),
    );
    let key = app.new_key("submitter");
    // The worker learns a new key on its first use (a few refreshes a
    // second at most): one request first, not five hundred at once.
    let known = app.get_with_key("/v1/analyses", &key);
    assert_ne!(known.status, 401, "{}", known.body);
    let head = format!(
        "POST /v1/submit HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 1000000\r\n\r\n"
    );
    let slow: Vec<std::os::unix::net::UnixStream> = (0..SLOW)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(&app.socket).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            // A first piece of the body, then nothing more.
            s.write_all(&[b's'; 16 << 10]).unwrap();
            s
        })
        .collect();
    let deadline = Instant::now() + 60 * SEC;
    while spool_files(&app) < SLOW {
        if Instant::now() > deadline {
            // Whatever a slow upload was answered says why it is not
            // spooling.
            let answers: Vec<String> = slow
                .iter()
                .filter_map(|s| {
                    let mut s = s.try_clone().ok()?;
                    s.set_nonblocking(true).ok()?;
                    let mut buf = [0u8; 512];
                    let n = std::io::Read::read(&mut s, &mut buf).ok()?;
                    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
                })
                .take(3)
                .collect();
            panic!(
                "{} of {SLOW} slow uploads spooled after 60 s; answers: {answers:?}; log:\n{}",
                spool_files(&app),
                app.log_text()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let r = app.submit(&key, &vec![b'f'; 64 << 10], &[]);
    assert_eq!(r.status, 202, "{}", r.body);
    drop(slow);
    app.wait_until("the slow uploads' spool files removed", 30 * SEC, |a| {
        spool_files(a) == 0
    });
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "1");
}

/// A small sample is scanned on the event loop for at most a second; one
/// whose scan needs longer is scanned again off the loop within the full
/// `yara.scan_timeout`, and matches as it would have.
#[test]
fn a_slow_scan_of_a_small_sample_moves_off_the_event_loop() {
    let db = TestDb::create("slowscan");
    let rules = common::temp_dir("slowscan");
    // Over two hundred million loop steps, each reading the sample (no
    // compiler folds them away): seconds of YARA-X anywhere.
    std::fs::write(
        rules.join("slow.yar"),
        "rule Slow_Loop { strings: $a = \"slow-marker\" condition: $a and \
         for all i in (0..15000) : (for all j in (0..15000) : (uint8((i + j) % filesize) < 256)) }",
    )
    .unwrap();
    let app = Appliance::start(
        "slowscan",
        "workers = 1\n",
        &format!(
            "[database]\nurl = \"{}\"\n[yara]\nrules_dir = \"{}\"\nscan_timeout = 120\n[queue]\nrunners = 0\n",
            db.url(),
            rules.display()
        ),
    );
    let key = app.new_key("submitter");
    let r = app.submit(&key, b"a slow-marker sample", &[]);
    assert_eq!(r.status, 202, "{}", r.body);
    let body = json(&r);
    assert_eq!(body["yara"][0]["rule"], "Slow_Loop", "{body}");
    assert!(body["yara_error"].is_null(), "{body}");
    app.wait_until("the move logged", 5 * SEC, |a| {
        a.log_text().contains("scanning it off the event loop")
    });
}

#[test]
fn rules_that_fail_to_compile_on_hup_keep_the_running_ones() {
    let db = TestDb::create("rules");
    let rules = common::temp_dir("rules");
    std::fs::write(
        rules.join("marker.yar"),
        "rule Marker_One { strings: $a = \"sandgnat-marker\" condition: $a }",
    )
    .unwrap();
    let app = Appliance::start(
        "rules",
        "workers = 1\n",
        &format!(
            "[database]\nurl = \"{}\"\n[yara]\nrules_dir = \"{}\"\n",
            db.url(),
            rules.display()
        ),
    );
    let key = app.new_key("submitter");
    let r = app.submit(&key, b"xx sandgnat-marker xx", &[]);
    assert_eq!(json(&r)["yara"][0]["rule"], "Marker_One");

    std::fs::write(
        rules.join("marker.yar"),
        "rule Marker_Two {\n  strings: $a = \"x\"\n  condition: $a and\n}\n",
    )
    .unwrap();
    app.signal(libc::SIGHUP);
    app.expect_notify("READY=1", 20 * SEC);
    app.wait_until("failure logged", 5 * SEC, |a| {
        a.log_text().contains("failed to compile")
    });
    let ready = json(&app.get("/readyz").unwrap());
    let why = ready["rules"]["last_reload_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains("marker.yar:4") || why.contains("marker.yar:3"),
        "{ready}"
    );
    let metrics = app.metrics_text();
    assert_eq!(
        common::metric_value(&metrics, "sandgnat_rules_stale"),
        Some(1.0),
        "{metrics}"
    );
    // The new generation of workers scans with the rules that compiled.
    let r = app.submit(&key, b"xx sandgnat-marker xx", &[]);
    assert_eq!(json(&r)["yara"][0]["rule"], "Marker_One");

    let out = std::process::Command::new(common::BIN)
        .args(["rules", "check"])
        .arg(&rules)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("marker.yar:"));
    let _ = std::fs::remove_dir_all(rules);
}

#[test]
fn samples_in_memory_and_spooled_are_hashed_scanned_and_stored_alike() {
    use sha2::{Digest, Sha256};
    let db = TestDb::create("spill");
    let dir = common::temp_dir("spill-rules");
    std::fs::write(
        dir.join("tail.yar"),
        "rule tail_marker { strings: $m = \"TAIL-MARKER\" condition: $m and filesize > 100 }",
    )
    .unwrap();
    // A small memory threshold, so both paths run with small samples.
    let app = Appliance::start(
        "spill",
        "workers = 2\n",
        &format!(
            "[database]\nurl = \"{}\"\n[intake]\nmemory_sample_bytes = 4096\n[yara]\nrules_dir = \"{}\"\n[queue]\nrunners = 0\n",
            db.url(),
            dir.display()
        ),
    );
    let key = app.new_key("submitter");
    for size in [4096usize, 4097, 3 << 20] {
        let mut body: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        body[size - 11..].copy_from_slice(b"TAIL-MARKER");
        // One goes without a name: it is named by its sha256.
        let named: &[(&str, &str)] = if size == 4097 {
            &[]
        } else {
            &[("X-Filename", "tail.bin")]
        };
        let r = app.submit(&key, &body, named);
        assert_eq!(r.status, 202, "{size}: {}", r.body);
        let v = json(&r);
        let sha256 = hex::encode(Sha256::digest(&body));
        let name = if named.is_empty() {
            sha256.as_str()
        } else {
            "tail.bin"
        };
        assert_eq!(v["filename"], name, "{size}");
        assert_eq!(
            db.scalar(&format!(
                "SELECT filename FROM analyses WHERE sample_sha256 = '{sha256}'"
            )),
            name
        );
        assert_eq!(v["sha256"], sha256.as_str(), "{size}");
        assert_eq!(v["size"], size, "{size}");
        assert_eq!(v["yara"][0]["rule"], "tail_marker", "{size}: {v}");
        assert_eq!(
            v["yara"][0]["strings"][0]["offsets"][0],
            size - 11,
            "{size}"
        );
        let stored = app
            .dir
            .join("quarantine")
            .join(&sha256[..2])
            .join(&sha256[2..4])
            .join(&sha256);
        assert_eq!(std::fs::read(&stored).unwrap(), body, "{size}");
        let mode = std::fs::metadata(&stored).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o440, "{size}");
        assert_eq!(
            db.scalar(&format!(
                "SELECT size || ' ' || md5 FROM samples WHERE sha256 = '{sha256}'"
            )),
            format!("{size} {:x}", md5::Md5::digest(&body)),
        );
    }
    assert_eq!(spool_files(&app), 0);
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "3");
    assert_eq!(db.scalar("SELECT count(*) FROM analysis_audit_log"), "6");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every worker hands its submissions to one recorder process. Killed, it
/// is replaced and submissions go on without a restart; HUP replaces it
/// while a client keeps submitting, and no submission fails or is lost.
#[test]
fn the_recorder_is_replaced_after_a_crash_and_on_hup_without_losing_a_submission() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let db = TestDb::create("recorder");
    let app = start("recorder", &db.url(), "");
    let key = app.new_key("submitter");
    let r = app.submit(&key, b"before the crash", &[]);
    assert_eq!(r.status, 202, "{}", r.body);
    let first = app.role_pids("recorder");
    assert_eq!(first.len(), 1, "one recorder: {first:?}");
    common::assert_isolated(first[0]);

    // Rows reach the recorder already authenticated: its socket is the
    // service account's alone, and a peer running as another user (root
    // passes any mode) is cut off at once.
    let sock = app.socket.with_file_name("recorder.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "recorder socket mode {mode:o}");
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        use std::io::Read;
        let mut peer = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        peer.set_read_timeout(Some(10 * SEC)).unwrap();
        let mut byte = [0u8; 1];
        let read = peer
            .read(&mut byte)
            .expect("the recorder kept a root peer open");
        assert_eq!(read, 0, "the recorder answered a root peer");
        app.wait_until("the refusal logged", 10 * SEC, |a| {
            a.log_text().contains("recorder: refused a connection")
        });
    }

    // SAFETY: kill(2) on the appliance's own child.
    unsafe { libc::kill(first[0] as i32, libc::SIGKILL) };
    app.wait_until("a new recorder", 10 * SEC, |a| {
        let now = a.role_pids("recorder");
        now.len() == 1 && now != first
    });
    let r = app.submit(&key, b"after the crash", &[]);
    assert_eq!(r.status, 202, "{}", r.body);

    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (socket, key, stop) = (app.socket.clone(), key.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let body = format!("sample {n} during reloads");
                let headers = [
                    ("X-API-Key", key.as_str()),
                    ("Content-Type", "application/octet-stream"),
                ];
                let r = request_unix_body(
                    &socket,
                    "POST",
                    "/v1/submit",
                    &headers,
                    Some(body.as_bytes()),
                );
                statuses.push(r.map(|r| (r.status, r.body)).map_err(|e| e.to_string()));
            }
            statuses
        })
    };
    for _ in 0..3 {
        let before = app.role_pids("recorder");
        app.signal(libc::SIGHUP);
        app.wait_until("the recorder replaced", 10 * SEC, |a| {
            let now = a.role_pids("recorder");
            now.len() == 1 && now != before
        });
    }
    stop.store(true, Ordering::SeqCst);
    let statuses = client.join().unwrap();
    let failed: Vec<_> = statuses
        .iter()
        .filter(|s| !matches!(s, Ok((202, _))))
        .collect();
    assert!(failed.is_empty(), "failed submissions: {failed:?}");
    assert!(
        statuses.len() >= 3,
        "too few submissions: {}",
        statuses.len()
    );
    let analyses: usize = db.scalar("SELECT count(*) FROM analyses").parse().unwrap();
    assert_eq!(analyses, statuses.len() + 2);
}

/// A graceful stop records the submission still uploading when TERM came:
/// the master stops the recorder only once the workers are gone.
#[test]
fn a_graceful_stop_records_the_submission_still_uploading() {
    use std::io::Read;

    let db = TestDb::create("termsubmit");
    let mut app = start("termsubmit", &db.url(), "");
    let key = app.new_key("submitter");
    // Every worker's connection to the recorder is open, so a recorder
    // stopped alongside the workers would tell them to go away.
    for i in 0..4 {
        let r = app.submit(&key, format!("warm-up {i}").as_bytes(), &[]);
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let body = b"a sample still uploading when TERM comes";
    let mut s = std::os::unix::net::UnixStream::connect(&app.socket).unwrap();
    write!(
        s,
        "POST /v1/submit HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body[..10]).unwrap();
    app.wait_until("the upload in flight", 5 * SEC, |a| {
        a.metric_sum("sandgnat_worker_pending_requests", "pid=") >= 1.0
    });
    app.signal(libc::SIGTERM);
    app.expect_notify("STOPPING=1", 5 * SEC);
    app.wait_until("the workers told to finish", 5 * SEC, |a| {
        a.log_text().contains("TERM: finishing in-flight requests")
    });
    s.write_all(&body[10..]).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let r = common::parse_response(&raw).unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(app.wait_exit(20 * SEC).code(), Some(0));
    let analyses: usize = db.scalar("SELECT count(*) FROM analyses").parse().unwrap();
    assert_eq!(analyses, 5);
}

#[test]
fn readyz_names_the_failed_check_and_keeps_the_driver_error_for_the_log() {
    let db = TestDb::create("readyz_detail");
    let app = start("readyz-detail", &db.url(), "");
    assert_eq!(app.get("/readyz").unwrap().status, 200);
    // A probe query the database refuses, with its own words for why.
    db.try_exec("ALTER TABLE _sqlx_migrations RENAME TO _sqlx_migrations_away")
        .unwrap();
    let r = app.get("/readyz").unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    let v = json(&r);
    assert_eq!(v["check"], "database");
    assert_eq!(v["error"], "not_ready");
    let message = v["message"].as_str().unwrap();
    assert_eq!(message, "the database cannot be queried");
    assert!(!r.body.contains("_sqlx_migrations"), "{}", r.body);
    // The operator still gets the driver's message, in the log.
    app.wait_until("the driver's error in the log", 5 * SEC, |a| {
        a.log_text().contains("readyz: cannot query the database")
            && a.log_text().contains("_sqlx_migrations")
    });
    db.try_exec("ALTER TABLE _sqlx_migrations_away RENAME TO _sqlx_migrations")
        .unwrap();
    assert_eq!(app.get("/readyz").unwrap().status, 200);
}

#[test]
fn a_retry_with_the_same_idempotency_key_gets_the_first_answer_and_nothing_more() {
    let db = TestDb::create("idem");
    let app = start("idem", &db.url(), "");
    let key = app.new_key("submitter");
    let other_key = app.new_key("submitter");
    let idem = [("Idempotency-Key", "8e03978e-40d5-43e8-bc93-6d2a9c1c5e6a")];

    let first = app.submit(&key, b"first bytes", &idem);
    assert_eq!(first.status, 202, "{}", first.body);
    let id = json(&first)["analysis_id"].as_str().unwrap().to_string();
    // The first answer again, byte for byte, with nothing new written.
    let again = app.submit(&key, b"first bytes", &idem);
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(json(&again), json(&first));
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "1");
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM jobs WHERE analysis_id = '{id}'"
        )),
        db.scalar("SELECT count(*) FROM jobs")
    );
    let jobs = db.scalar("SELECT count(*) FROM jobs");
    assert_eq!(db.scalar("SELECT count(*) FROM analysis_audit_log"), "2");

    // Other bytes under a used key: refused, and nothing kept of them.
    let r = app.submit(&key, b"other bytes", &idem);
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(json(&r)["error"], "idempotency_key_reused");
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "1");
    assert_eq!(db.scalar("SELECT count(*) FROM samples"), "1");

    // The key is the client's own: another API key may use the same one.
    let r = app.submit(&other_key, b"first bytes", &idem);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_ne!(json(&r)["analysis_id"], json(&first)["analysis_id"]);
    // Without the header, as ever: each submission its own analysis.
    for _ in 0..2 {
        assert_eq!(app.submit(&key, b"first bytes", &[]).status, 202);
    }
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "4");

    // A malformed key is refused before the body is read.
    let long = "k".repeat(256);
    for bad in [long.as_str(), "caf\u{e9}", ""] {
        let r = app.submit(&key, b"first bytes", &[("Idempotency-Key", bad)]);
        assert_eq!(r.status, 400, "{bad:?}: {}", r.body);
        assert_eq!(json(&r)["error"], "invalid_idempotency_key");
    }
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "4");

    // Tries at once with one key: one analysis, one set of jobs, and every
    // try answered with it.
    let before_jobs: i64 = db.scalar("SELECT count(*) FROM jobs").parse().unwrap();
    let tries: Vec<_> = (0..8)
        .map(|_| {
            let (socket, key) = (app.socket.clone(), key.clone());
            std::thread::spawn(move || {
                common::request_unix_body(
                    &socket,
                    "POST",
                    "/v1/submit",
                    &[
                        ("X-API-Key", &key),
                        ("Content-Type", "application/octet-stream"),
                        ("Idempotency-Key", "race"),
                    ],
                    Some(b"raced bytes"),
                )
                .unwrap()
            })
        })
        .collect();
    let answers: Vec<_> = tries.into_iter().map(|t| t.join().unwrap()).collect();
    for a in &answers {
        assert_eq!(a.status, 202, "{}", a.body);
        assert_eq!(json(a), json(&answers[0]));
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM analyses WHERE sample_sha256 = encode(sha256('raced bytes'), 'hex')"),
        "1"
    );
    let after_jobs: i64 = db.scalar("SELECT count(*) FROM jobs").parse().unwrap();
    let per_submission: i64 = jobs.parse().unwrap();
    assert_eq!(after_jobs - before_jobs, per_submission);
}

#[test]
fn a_retry_after_an_unconfirmed_commit_is_answered_with_the_analysis_that_committed() {
    let db = TestDb::create("idemwait");
    let app = Appliance::start(
        "idemwait",
        "workers = 1\n",
        &format!(
            "[database]\nurl = \"{}\"\nrecord_timeout_ms = 1000\n[queue]\nrunners = 0\n",
            db.url()
        ),
    );
    let key = app.new_key("submitter");
    let idem = [("Idempotency-Key", "unconfirmed-then-retried")];
    // The statement's foreign-key checks, at its end, wait for the key's
    // row until released: the statement is sent and running, outlives its
    // deadline, then commits. Reads (the key's authentication) go on.
    let held = db.hold("SELECT id FROM api_keys FOR UPDATE");
    let r = app.submit(&key, b"recorded late", &idem);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(json(&r)["error"], "unconfirmed");
    held.release();
    app.wait_until("the late statement commits", 10 * SEC, |_| {
        db.scalar("SELECT count(*) FROM analyses") == "1"
    });
    let late = db.scalar("SELECT id FROM analyses");

    let r = app.submit(&key, b"recorded late", &idem);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(json(&r)["analysis_id"], late.as_str());
    assert_eq!(db.scalar("SELECT count(*) FROM analyses"), "1");
}

/// Bytes already in the quarantine, submitted under the same name and
/// scanned by the same rules, get the stored answer instead of a scan
/// (`yara_cached`), on every intake path: a small sample scanned on the
/// event loop, a larger one in memory, a spooled one. A different name
/// (the rules see it), a key that may not read the earlier analysis, or a
/// HUP that changes the rules scans again.
#[test]
fn a_known_sample_reuses_its_answer_until_the_name_the_key_or_the_rules_change() {
    let db = TestDb::create("known");
    let rules = common::temp_dir("known-rules");
    let write_rules = |marker: &str| {
        std::fs::write(
            rules.join("known.yar"),
            format!(
                "rule {marker} {{ strings: $a = \"sandgnat-known\" condition: $a }}\n\
                 rule Named_Exe {{ condition: extension == \".exe\" }}\n"
            ),
        )
        .unwrap()
    };
    write_rules("Known_One");
    let app = Appliance::start(
        "known",
        "workers = 2\n",
        &format!(
            "[database]\nurl = \"{}\"\n[intake]\nmemory_sample_bytes = 65536\n[yara]\nrules_dir = \"{}\"\n[queue]\nrunners = 0\n",
            db.url(),
            rules.display()
        ),
    );
    let key = app.new_key("submitter");
    let other = app.new_key("submitter");
    let admin = app.new_key("admin");
    let rule_names = |v: &serde_json::Value| -> Vec<String> {
        let mut names: Vec<String> = v["yara"]
            .as_array()
            .unwrap_or_else(|| panic!("no matches in {v}"))
            .iter()
            .map(|m| m["rule"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let submit = |key: &str, body: &[u8], name: &str| {
        let r = app.submit(key, body, &[("X-Filename", name)]);
        assert_eq!(r.status, 202, "{}", r.body);
        json(&r)
    };
    // Inline (under 16 KiB), in memory off the event loop, spooled.
    let samples: Vec<Vec<u8>> = [100usize, 40_000, 200_000]
        .iter()
        .map(|&size| {
            let mut body: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
            body[size / 2..size / 2 + 14].copy_from_slice(b"sandgnat-known");
            body
        })
        .collect();
    for body in &samples {
        let first = submit(&key, body, "a.bin");
        assert_eq!(first["yara_cached"], false, "{first}");
        assert_eq!(rule_names(&first), ["Known_One"]);

        let again = submit(&key, body, "a.bin");
        assert_eq!(again["yara_cached"], true, "{again}");
        assert_eq!(again["yara"], first["yara"]);
        assert_ne!(again["analysis_id"], first["analysis_id"]);
        let id = again["analysis_id"].as_str().unwrap();
        let read = app.get_with_key(&format!("/v1/analyses/{id}"), &key).json();
        assert_eq!(read["yara_cached"], true, "{read}");
        assert_eq!(read["yara"], first["yara"]);
        assert_eq!(
            db.scalar(&format!(
                "SELECT details->>'cached' FROM analysis_audit_log
                  WHERE analysis_id = '{id}' AND event = 'scanned'"
            )),
            "true"
        );
        let first_id = first["analysis_id"].as_str().unwrap();
        let read = app
            .get_with_key(&format!("/v1/analyses/{first_id}"), &key)
            .json();
        assert_eq!(read["yara_cached"], false, "{read}");
        assert_eq!(read["yara_rules_digest"].as_str().map(str::len), Some(64));

        // The name is one of the rules' inputs.
        let renamed = submit(&key, body, "a.EXE");
        assert_eq!(renamed["yara_cached"], false, "{renamed}");
        assert_eq!(rule_names(&renamed), ["Known_One", "Named_Exe"]);

        // Another submitter may not read the first analyses: scanned
        // afresh, so the answer does not say the bytes were seen. An
        // admin reads everything: reused.
        let theirs = submit(&other, body, "a.bin");
        assert_eq!(theirs["yara_cached"], false, "{theirs}");
        assert_eq!(theirs["yara"], first["yara"]);
        let admins = submit(&admin, body, "a.bin");
        assert_eq!(admins["yara_cached"], true, "{admins}");
    }

    // New rules: the same bytes and name are scanned by them.
    let old_workers = app.worker_pids();
    write_rules("Known_Two");
    app.signal(libc::SIGHUP);
    app.expect_notify("READY=1", 20 * SEC);
    app.wait_until("the old workers gone", 20 * SEC, |a| {
        let now = a.worker_pids();
        !now.is_empty() && now.iter().all(|p| !old_workers.contains(p))
    });
    for body in &samples {
        let rescanned = submit(&key, body, "a.bin");
        assert_eq!(rescanned["yara_cached"], false, "{rescanned}");
        assert_eq!(rule_names(&rescanned), ["Known_Two"]);
        let again = submit(&key, body, "a.bin");
        assert_eq!(again["yara_cached"], true, "{again}");
        assert_eq!(rule_names(&again), ["Known_Two"]);
    }
    assert_eq!(
        db.scalar("SELECT count(DISTINCT yara_rules_digest) FROM analyses"),
        "2"
    );
    let _ = std::fs::remove_dir_all(rules);
}
