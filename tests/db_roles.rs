//! Database roles end to end, through the real binary: the appliance runs
//! with `database.url` as a login role in `sandgnat_service` and migrates
//! as a separate owner (the package's layout, the owner reached as
//! postgres acting as it), does a whole submission as that role, and the
//! role cannot disable the audit trail's triggers, delete its rows or
//! drop a table. Run as the owner without `database.allow_owner`, `serve`
//! refuses to start and `/readyz` answers 503 `database_role`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::db::{psql, Relay, TestDb};
use common::Appliance;
use serde_json::json;

const SEC: Duration = Duration::from_secs(1);
const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The group role, made as the migration makes it (roles are
/// cluster-wide; another test may be making it at the same moment).
fn ensure_service_group() {
    psql(
        ADMIN,
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sandgnat_service') THEN
             BEGIN CREATE ROLE sandgnat_service NOLOGIN;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
           END IF;
         END $$",
    );
}

/// Throwaway cluster roles, dropped last (declare before the database).
struct Roles(Vec<String>);

impl Drop for Roles {
    fn drop(&mut self) {
        for r in &self.0 {
            let _ = Command::new("psql")
                .args([ADMIN, "-tAc", &format!("DROP ROLE IF EXISTS {r}")])
                .output();
        }
    }
}

/// Runs `sql` as whoever `url` names; psql's error text on failure.
fn try_psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn suffix() -> String {
    format!(
        "{}_{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            & 0xffffff
    )
}

#[test]
fn the_service_role_serves_and_cannot_rewrite_the_audit_trail() {
    ensure_service_group();
    let s = suffix();
    let owner = format!("sandgnat_t_own_{s}");
    let app_role = format!("sandgnat_t_app_{s}");
    let _roles = Roles(vec![app_role.clone(), owner.clone()]);
    psql(ADMIN, &format!("CREATE ROLE {owner} NOLOGIN"));
    psql(
        ADMIN,
        &format!("CREATE ROLE {app_role} LOGIN IN ROLE sandgnat_service"),
    );
    let db = TestDb::create("roles");
    psql(
        ADMIN,
        &format!("ALTER DATABASE {} OWNER TO {owner}", db.name),
    );
    let service_url = format!("postgres://{app_role}@127.0.0.1:5432/{}", db.name);
    // postgres acting as the owner: tables made by the migrations are the
    // owner's, as under the package's post-install.
    let migrate_url = format!(
        "postgres://postgres@127.0.0.1:5432/{}?options=-c%20role%3D{owner}",
        db.name
    );
    let app = Appliance::start(
        "roles",
        "workers = 1\n",
        &format!(
            "[database]\nurl = \"{service_url}\"\nmigrate_url = \"{migrate_url}\"\n\
             allow_owner = false\n"
        ),
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> '{owner}'"
        )),
        "0"
    );
    // Every table the migrations made, however many there are now.
    let tables = db.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'");
    assert_ne!(tables, "0");
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = '{owner}'"
        )),
        tables
    );
    let ready = app.get("/readyz").unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);

    // The whole flow as the service role, keys made by the CLI with it.
    let submitter = app.new_key("submitter");
    let bridge = app.new_key("bridge");
    let reader = app.new_key("reader");
    let admin = app.new_key("admin");
    let sub = app.submit(&submitter, EICAR, &[("X-Filename", "eicar.com")]);
    assert_eq!(sub.status, 202, "{}", sub.body);
    let id = sub.json()["analysis_id"].as_str().unwrap().to_string();
    let claimed = app.post_json(
        &bridge,
        "/v1/queues/analysis/claim",
        json!({"max_jobs": 1, "lease_seconds": 60}),
    );
    assert_eq!(claimed.status, 200, "{}", claimed.body);
    let job = claimed.json()["jobs"][0].clone();
    assert_eq!(job["analysis_id"], id.as_str(), "{job}");
    let done = app.post_json(
        &bridge,
        &format!("/v1/jobs/{}/complete", job["id"].as_str().unwrap()),
        json!({"lease_token": job["lease_token"], "result": {"verdict": "clean"}}),
    );
    assert_eq!(done.status, 200, "{}", done.body);
    // The job runner, as the service role too, does the static analysis.
    app.wait_until("the static result", 30 * SEC, |a| {
        a.get_with_key(&format!("/v1/analyses/{id}"), &reader)
            .json()["results"]["static"]
            .is_object()
    });
    let seen = app.get_with_key(&format!("/v1/analyses/{id}"), &reader);
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert_eq!(seen.json()["results"]["detonate"]["verdict"], "clean");
    let audit = app.get_with_key(&format!("/v1/audit?analysis_id={id}"), &admin);
    assert_eq!(audit.status, 200, "{}", audit.body);
    let trail = db.scalar(&format!(
        "SELECT count(*) FROM analysis_audit_log WHERE analysis_id = '{id}'"
    ));
    assert!(trail.parse::<u32>().unwrap() >= 2, "{trail}");

    // What a worker taken over could try with its credentials.
    for sql in [
        "ALTER TABLE analysis_audit_log DISABLE TRIGGER ALL",
        "DELETE FROM analysis_audit_log",
        "UPDATE analysis_audit_log SET event = 'nothing'",
        "DROP TABLE analyses",
        "DROP TABLE _sqlx_migrations",
    ] {
        let err = try_psql(&service_url, sql).expect_err(sql);
        assert!(
            err.contains("must be owner") || err.contains("permission denied"),
            "{sql}: {err}"
        );
    }
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM analysis_audit_log WHERE analysis_id = '{id}'"
        )),
        trail
    );

    // `sandgnat migrate` goes as the owner.
    let mut migrate = Command::new(common::BIN);
    migrate
        .args(["migrate", "--config"])
        .arg(app.dir.join("sandgnat.toml"));
    common::clean_env(&mut migrate);
    let out = migrate.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(app);
}

#[test]
fn serve_refuses_to_run_as_a_superuser_without_allow_owner() {
    let db = TestDb::create("roles_refuse");
    let mut app = Appliance::spawn(
        "roles-refuse",
        "workers = 1\n",
        &format!("[database]\nurl = \"{}\"\nallow_owner = false\n", db.url()),
    );
    let status = app
        .wait_ready(30 * SEC)
        .expect_err("serve started as a superuser");
    assert_eq!(status.code(), Some(2), "{}", app.log_text());
    let log = app.log_text();
    assert!(log.contains("database.allow_owner"), "{log}");
    assert!(log.contains("sandgnat_service"), "{log}");
}

#[test]
fn readyz_refuses_an_owner_connection_without_allow_owner() {
    let db = TestDb::create("roles_readyz");
    // The database is away while serve starts (its check at start is then
    // skipped), so the workers meet the owner only later: /readyz has to
    // catch it on its own.
    let relay = Relay::start("127.0.0.1:5432");
    relay.cut();
    let app = Appliance::start(
        "roles-readyz",
        "workers = 1\n",
        &format!(
            "[database]\nurl = \"{}\"\nmigrate_url = \"{}\"\nallow_owner = false\n",
            db.url_via(&relay.addr),
            db.url()
        ),
    );
    let down = app.get("/readyz").unwrap();
    assert_eq!(down.status, 503, "{}", down.body);
    assert_eq!(down.json()["check"], "database", "{}", down.body);
    relay.restore();
    let mut last = None;
    app.wait_until("readyz names the role", 15 * SEC, |a| {
        let r = a.get("/readyz").unwrap();
        let named = r.status == 503 && r.json()["check"] == "database_role";
        last = Some(r);
        named
    });
    let r = last.unwrap();
    assert_eq!(r.json()["error"], "not_ready");
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("database.allow_owner"), "{message}");
    // The probe is unauthenticated: no role or database names.
    assert!(!message.contains("postgres"), "{message}");
}
