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
