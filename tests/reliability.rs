//! What the appliance promises about durability, end to end (issue 16):
//! it says when the database would lose acknowledged commits, and it
//! removes what a crash leaves on disk without touching a recorded sample.

mod common;

use std::io::Write;
use std::time::Duration;

use common::db::TestDb;
use common::Appliance;

const SEC: Duration = Duration::from_secs(1);

fn json(r: &common::Response) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", r.body))
}

fn start(tag: &str, db: &TestDb, intake: &str) -> Appliance {
    Appliance::start(
        tag,
        "workers = 1\n",
        &format!(
            "[database]\nurl = \"{}\"\n[intake]\n{intake}\n[queue]\nrunners = 0\n",
            db.url()
        ),
    )
}

fn readyz(app: &Appliance) -> serde_json::Value {
    let r = app.get("/readyz").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    json(&r)
}

#[test]
fn a_database_that_does_not_sync_commits_is_reported_not_hidden() {
    let db = TestDb::create("durable");
    let app = start("durable", &db, "");
    app.wait_until("durability read", 10 * SEC, |a| {
        readyz(a)["durable"].is_boolean()
    });
    assert_eq!(readyz(&app)["durable"], true);
    assert_eq!(app.metric("sandgnat_database_durable"), Some(1.0));

    // This database only: the server-wide setting stays as it is.
    db.try_exec(&format!(
        "ALTER DATABASE {} SET synchronous_commit = off",
        db.name
    ))
    .unwrap();
    // A new recorder opens new sessions, which get the setting.
    app.signal(libc::SIGHUP);
    app.wait_until("the new recorder read the setting", 20 * SEC, |a| {
        a.metric("sandgnat_database_durable") == Some(0.0)
    });
    let ready = readyz(&app);
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["durable"], false, "{ready}");
    let why = ready["durability"].as_str().unwrap_or_default();
    assert!(why.contains("synchronous_commit"), "{ready}");
    let warned = |a: &Appliance| {
        a.log_text()
            .lines()
            .filter(|l| l.contains("does not make commits durable"))
            .count()
    };
    assert_eq!(warned(&app), 1, "{}", app.log_text());
    // Submissions still go through: this is reported, not enforced.
    let key = app.new_key("submitter");
    assert_eq!(app.submit(&key, b"fast, not durable", &[]).status, 202);
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn leftovers_of_a_killed_upload_and_an_unrecorded_sample_are_swept() {
    let db = TestDb::create("leftovers");
    // Age 0 so the test need not wait; a sweep only at start (of each
    // recorder), so nothing is swept while the upload is live.
    let app = start(
        "leftovers",
        &db,
        "leftover_age = 0\nleftover_sweep_interval = 86400\n",
    );
    let key = app.new_key("submitter");
    let r = app.submit(&key, b"a recorded sample stays", &[]);
    assert_eq!(r.status, 202, "{}", r.body);
    let kept = std::path::PathBuf::from(db.scalar("SELECT storage_path FROM samples"));
    assert!(kept.exists(), "{}", kept.display());

    // A quarantine file that no sample names, as a crash between the
    // rename and the commit leaves it, owned as the service made it.
    let quarantine = app.dir.join("quarantine");
    let stray_sha = format!("ab{}", "0".repeat(62));
    let stray = quarantine.join("ab").join("00").join(&stray_sha);
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"never recorded").unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(&quarantine).unwrap();
        for p in [
            quarantine.join("ab"),
            quarantine.join("ab/00"),
            stray.clone(),
        ] {
            std::os::unix::fs::chown(&p, Some(owner.uid()), Some(owner.gid())).unwrap();
        }
    }

    // A worker killed mid-upload leaves its spool file.
    let spool = app.dir.join("spool");
    let spooled = || files_under(&spool).len();
    let mut s = std::os::unix::net::UnixStream::connect(&app.socket).unwrap();
    write!(
        s,
        "POST /v1/submit HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 10000000\r\n\r\n"
    )
    .unwrap();
    // Past intake.memory_sample_bytes (1 MiB): spilled to a spool file.
    s.write_all(&vec![b'z'; 2_000_000]).unwrap();
    app.wait_until("upload under way", 5 * SEC, |_| spooled() == 1);
    let pids = app.worker_pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    // SAFETY: kill(2) on a worker of our appliance.
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    app.wait_until("the worker replaced", 10 * SEC, |a| {
        let now = a.worker_pids();
        now.len() == 1 && now[0] != pids[0]
    });
    drop(s);
    assert_eq!(spooled(), 1, "the killed worker's spool file is left");
    assert_eq!(
        app.metric("sandgnat_leftovers_removed_total{kind=\"spool\"}"),
        Some(0.0)
    );

    // The next recorder sweeps at its start.
    app.signal(libc::SIGHUP);
    app.wait_until("both leftovers removed", 20 * SEC, |a| {
        a.metric("sandgnat_leftovers_removed_total{kind=\"spool\"}") == Some(1.0)
            && a.metric("sandgnat_leftovers_removed_total{kind=\"quarantine\"}") == Some(1.0)
    });
    assert_eq!(spooled(), 0);
    assert!(!stray.exists());
    assert!(kept.exists(), "a recorded sample's file was removed");
    assert_eq!(files_under(&quarantine), vec![kept.clone()]);
    // And it still serves the same bytes again (dedup onto the kept file).
    let r = app.submit(&key, b"a recorded sample stays", &[]);
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(kept.exists());
}

// ---------------------------------------------------------------------
// Nothing a client sends on a kept-alive connection is lost to a change
// of processes: a reload (HUP), a smaller pool (TTOU), a worker recycled
// after `max_requests`, a binary upgrade (USR2). Each runs under keep-alive
// clients posting samples through the TLS front end over HTTP/1.1 and
// HTTP/2 (tests/common/keepalive.rs says what counts as failed).

use common::keepalive::{self, Proto};

const BOTH: [Proto; 2] = [Proto::Http1, Proto::Http2];
/// Clients per protocol.
const CLIENTS: usize = 4;

fn posting_app(tag: &str, db: &TestDb, server: &str) -> (Appliance, String) {
    let app = Appliance::start_with(
        tag,
        server,
        "rate_limit_per_ip = 0\nrate_limit_per_key = 0\n",
        &format!("[database]\nurl = \"{}\"\n[queue]\nrunners = 0\n", db.url()),
    );
    let key = app.new_key("submitter");
    (app, key)
}

fn front_ends(app: &Appliance) -> usize {
    app.role_pids("front-end").len()
}

/// Reloads, 0.75 s apart (an operator's pace is slower).
const HUPS: usize = 12;

#[test]
fn reloads_under_keep_alive_clients_fail_no_request() {
    let db = TestDb::create("ka_hup");
    let (app, key) = posting_app("ka-hup", &db, "workers = 2\n");
    let first = app.worker_pids();
    let posters = keepalive::start(&app, &key, &BOTH, CLIENTS);
    for _ in 0..HUPS {
        app.signal(libc::SIGHUP);
        app.expect_notify("RELOADING=1", 10 * SEC);
        app.expect_notify("READY=1", 20 * SEC);
        // An operator's pace: the load goes on between reloads.
        std::thread::sleep(Duration::from_millis(750));
    }
    posters.wait_for(50);
    // Until every retired process has left, its last connections too.
    app.wait_until("retired processes gone", 30 * SEC, |a| {
        front_ends(a) == 1 && a.role_pids("worker").len() == 2
    });
    let tallies = posters.stop();
    keepalive::assert_none_failed("reloads", &tallies, 50);
    assert!(app.worker_pids().iter().all(|p| !first.contains(p)));
}

#[test]
fn a_shrinking_pool_fails_no_request() {
    let db = TestDb::create("ka_ttou");
    let (app, key) = posting_app("ka-ttou", &db, "workers = 2\n");
    let posters = keepalive::start(&app, &key, &BOTH, CLIENTS);
    for _ in 0..6 {
        app.signal(libc::SIGTTIN);
        app.wait_until("3 workers", 20 * SEC, |a| a.role_pids("worker").len() == 3);
        posters.wait_for(50);
        // The oldest worker leaves, with connections the front end holds.
        app.signal(libc::SIGTTOU);
        app.wait_until("2 workers", 20 * SEC, |a| a.role_pids("worker").len() == 2);
        posters.wait_for(50);
    }
    let tallies = posters.stop();
    keepalive::assert_none_failed("6 TTIN and TTOU", &tallies, 50);
}

#[test]
fn recycling_after_max_requests_fails_no_request() {
    let db = TestDb::create("ka_maxreq");
    let (app, key) = posting_app(
        "ka-maxreq",
        &db,
        "workers = 2\nmax_requests = 60\nmax_requests_jitter = 30\n",
    );
    let posters = keepalive::start(&app, &key, &BOTH, CLIENTS);
    app.wait_until("6 workers recycled", 60 * SEC, |a| {
        a.metric(r#"sandgnat_worker_restarts_total{reason="max_requests"}"#)
            .is_some_and(|n| n >= 6.0)
    });
    let tallies = posters.stop();
    keepalive::assert_none_failed("max_requests", &tallies, 50);
}

#[test]
fn a_binary_upgrade_fails_no_request() {
    common::become_subreaper();
    let db = TestDb::create("ka_usr2");
    let (mut app, key) = posting_app("ka-usr2", &db, "workers = 2\n");
    let old_master = app.pid();
    let posters = keepalive::start(&app, &key, &BOTH, CLIENTS);
    posters.wait_for(50);
    app.signal(libc::SIGUSR2);
    let msg = app.expect_notify("READY=1", 30 * SEC);
    let new_master: i32 = msg
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .expect("MAINPID in the new master's READY");
    assert_ne!(new_master, old_master);
    assert_eq!(app.wait_exit(60 * SEC).code(), Some(0));
    // The new master serves alone for a while.
    posters.wait_for(100);
    let tallies = posters.stop();
    // SAFETY: kill(2) and waitpid(2) on the re-parented new master (this
    // process is its subreaper).
    unsafe { libc::kill(new_master, libc::SIGTERM) };
    let mut status = 0;
    assert_eq!(
        unsafe { libc::waitpid(new_master, &mut status, 0) },
        new_master
    );
    keepalive::assert_none_failed("USR2", &tallies, 50);
}
