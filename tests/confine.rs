//! Confinement of the processes that touch samples, tried from inside a
//! real worker (`/__debug/confined`): no program can be executed, neither
//! `/etc/shadow` nor the settings file can be opened, and, where the
//! kernel's Landlock bounds TCP by port, no port but the database's can be
//! reached. Job runners carry the same filters (seen in /proc).

mod common;

use std::time::Duration;

use common::db::TestDb;
use common::Appliance;

const SEC: Duration = Duration::from_secs(1);

fn start(tag: &str, db_url: &str, debug: &str) -> Appliance {
    Appliance::start(
        tag,
        "workers = 1\n",
        &format!(
            "[database]\nurl = \"{db_url}\"\n[queue]\nrunners = 1\n\
             [debug]\nfault_injection = true\n{debug}"
        ),
    )
}

/// The Landlock ABI of this kernel (0: none).
fn landlock_abi() -> i64 {
    // SAFETY: the version query of landlock_create_ruleset(2).
    let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, 0usize, 0usize, 1u32) };
    v.max(0)
}

/// What the worker reports it could do, with a listener of the test's
/// own (a port no role needs) as the connection target.
fn probe(app: &Appliance) -> (serde_json::Value, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let settings = app.dir.join("sandgnat.toml").display().to_string();
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("open", &settings)
        .append_pair("port", &port.to_string())
        .finish();
    let r = app.get(&format!("/__debug/confined?{query}")).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    (r.json(), settings)
}

fn status_field(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

#[test]
fn a_worker_cannot_execute_read_secrets_or_reach_other_ports() {
    let db = TestDb::create("confined");
    let app = start("confined", &db.url(), "");
    let (report, settings) = probe(&app);

    assert_eq!(report["execve"]["ok"], false, "{report}");
    assert_eq!(report["execve"]["errno"], libc::EPERM, "{report}");
    assert_eq!(report["open"]["/etc/shadow"]["ok"], false, "{report}");
    // Readable by the worker's account (0644): only Landlock refuses it.
    assert_eq!(report["open"][&settings]["ok"], false, "{report}");
    if landlock_abi() >= 4 {
        assert_eq!(report["connect"]["ok"], false, "{report}");
        assert_eq!(report["connect"]["errno"], libc::EACCES, "{report}");
    }
    // The worker still does its work: the database answers through it.
    let key = app.new_key("submitter");
    let r = app.submit(&key, b"confined sample", &[]);
    assert!(r.status < 300, "{} {}", r.status, r.body);

    // Both roles carry the filters (the allow-list and clone3's ENOSYS).
    app.wait_until("a job runner", 10 * SEC, |a| {
        !a.role_pids("job-runner").is_empty()
    });
    for pid in app
        .worker_pids()
        .into_iter()
        .chain(app.role_pids("job-runner"))
    {
        assert_eq!(status_field(pid, "Seccomp"), "2", "pid {pid}");
        assert_eq!(status_field(pid, "Seccomp_filters"), "2", "pid {pid}");
        assert_eq!(status_field(pid, "NoNewPrivs"), "1", "pid {pid}");
    }
}

#[test]
fn confinement_can_be_turned_off_for_debugging_and_says_so() {
    let db = TestDb::create("unconfined");
    let app = start("unconfined", &db.url(), "confine = false\n");
    let (report, settings) = probe(&app);

    // The probe's argument vector is unreadable, so the worker survives.
    assert_eq!(report["execve"]["ok"], false, "{report}");
    assert_eq!(report["execve"]["errno"], libc::EFAULT, "{report}");
    assert_eq!(report["open"][&settings]["ok"], true, "{report}");
    assert_eq!(report["connect"]["ok"], true, "{report}");
    let log = app.log_text();
    assert!(
        log.contains("debug.confine = false"),
        "no warning that confinement is off"
    );
}
