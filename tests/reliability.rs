//! What the appliance promises about durability, end to end (issue 16):
//! it says when the database would lose acknowledged commits.

mod common;

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
