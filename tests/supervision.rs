//! The process model end to end: the real binary, real signals, real
//! sockets. Each test starts its own appliance in its own directory.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{request_unix, Appliance};

const SEC: Duration = Duration::from_secs(1);

#[test]
fn healthz_answers_and_metrics_count_it() {
    let app = Appliance::start("healthz", "workers = 2\n", "");
    let r = app.get("/healthz").unwrap();
    assert_eq!(r.status, 200);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok"}));
    assert!(r.header("x-request-id").is_some_and(|v| v.len() == 32));

    // A request id from the front end is kept.
    let r = request_unix(
        &app.socket,
        "GET",
        "/healthz",
        &[("X-Request-Id", "abc-123")],
    )
    .unwrap();
    assert_eq!(r.header("x-request-id"), Some("abc-123"));

    let r = app.get("/nope").unwrap();
    assert_eq!(r.status, 404);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"], "not_found");

    let text = app.metrics_text();
    assert_eq!(
        common::metric_value(
            &text,
            r#"sandgnat_requests_total{route="/healthz",status="200"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        common::metric_value(
            &text,
            r#"sandgnat_requests_total{route="other",status="404"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        common::metric_value(&text, r#"sandgnat_pending_connections{listener="workers"}"#),
        Some(0.0)
    );
    assert!(
        text.contains(r#"sandgnat_request_duration_seconds_bucket{route="/healthz",le="+Inf"} 2"#)
    );
    assert_eq!(app.worker_pids().len(), 2);
}

/// A burst of connects (a front end filling its pool, a load balancer)
/// lands on whichever worker accepts first; the workers hand the surplus
/// to the least loaded instead, so no worker holds most of them.
#[test]
fn a_burst_of_connections_is_spread_over_the_workers() {
    use std::io::{Read, Write};
    let app = Appliance::start("balance", "workers = 4\n", "");
    app.wait_until("4 workers up", 30 * SEC, |a| a.worker_pids().len() == 4);
    // Connect all at once: each connect completes in the kernel's backlog
    // before any worker has accepted it.
    let mut conns: Vec<std::os::unix::net::UnixStream> = (0..16)
        .map(|_| std::os::unix::net::UnixStream::connect(&app.socket).unwrap())
        .collect();
    for c in &mut conns {
        c.set_read_timeout(Some(10 * SEC)).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains(r#""ok"}"#) {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed before its answer");
            seen.extend_from_slice(&buf[..n]);
        }
    }
    // Every connection is open and has been answered: each is counted
    // by the worker that holds it.
    let text = app.metrics_text();
    let per_worker: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("sandgnat_worker_active_connections{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(per_worker.len(), 4, "{text}");
    assert_eq!(per_worker.iter().sum::<f64>(), 16.0, "{text}");
    let most = per_worker.iter().cloned().fold(0.0, f64::max);
    assert!(most <= 8.0, "one worker holds {most} of 16: {per_worker:?}");
    drop(conns);
}

#[test]
fn access_log_uses_gunicorn_atoms_and_carries_request_id() {
    let app = Appliance::start(
        "access",
        "workers = 1\n",
        "[log]\nformat = \"json\"\naccess_log_format = '%(m)s %(U)s %(s)s %({X-Request-Id}i)s'\n",
    );
    request_unix(&app.socket, "GET", "/healthz", &[("X-Request-Id", "req-7")]).unwrap();
    app.wait_until("access line", 5 * SEC, |a| {
        a.log_text().contains("GET /healthz 200 req-7")
    });
    let line = app
        .log_text()
        .lines()
        .find(|l| l.contains("GET /healthz 200 req-7"))
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["request_id"], "req-7");
    assert_eq!(v["role"], "worker");
    assert!(v["pid"].as_u64().unwrap() > 0);
}

#[test]
fn hung_worker_is_aborted_named_and_replaced() {
    let app = Appliance::start("hang", "workers = 2\ntimeout = 2\n", "");
    let before = app.worker_pids();
    let socket = app.socket.clone();
    let started = Instant::now();
    let hung = std::thread::spawn(move || request_unix(&socket, "GET", "/__debug/hang", &[]));
    let abort = app.expect_event("worker_abort", 10 * SEC);
    assert!(
        abort["request"]
            .as_str()
            .unwrap()
            .contains("GET /__debug/hang"),
        "{abort}"
    );
    let pid = abort["pid"].as_u64().unwrap() as u32;
    assert!(before.contains(&pid));
    // The client of the hung request sees its connection end.
    assert!(hung.join().unwrap().is_err());
    // timeout (2 s) + one supervision tick + the abort grace, with margin.
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    app.wait_until("replacement", 10 * SEC, |a| {
        let pids = a.worker_pids();
        pids.len() == 2 && !pids.contains(&pid)
    });
    assert_eq!(
        app.metric(r#"sandgnat_worker_restarts_total{reason="timeout"}"#),
        Some(1.0)
    );
    assert_eq!(app.get("/healthz").unwrap().status, 200);
}

#[test]
fn crashed_worker_is_replaced() {
    let app = Appliance::start("crash", "workers = 1\n", "");
    let before = app.worker_pids();
    // The worker dies mid-request: the client sees the connection drop.
    assert!(app.get("/__debug/crash").is_err());
    app.wait_until("crash counted", 10 * SEC, |a| {
        a.metric(r#"sandgnat_worker_restarts_total{reason="crash"}"#) == Some(1.0)
    });
    app.wait_until("replacement", 10 * SEC, |a| {
        let p = a.worker_pids();
        p.len() == 1 && p != before
    });
    assert_eq!(app.get("/healthz").unwrap().status, 200);
}

#[test]
fn max_requests_recycles_without_failing_a_request() {
    let app = Appliance::start(
        "maxreq",
        "workers = 1\nmax_requests = 5\nmax_requests_jitter = 2\n",
        "",
    );
    let first = app.worker_pids();
    // A worker past max_requests serves on until its replacement is
    // ready, so the requests go on until two have left.
    let mut sent = 0;
    app.wait_until("recycled twice", 30 * SEC, |a| {
        for _ in 0..5 {
            sent += 1;
            let r = a
                .get("/healthz")
                .unwrap_or_else(|e| panic!("request {sent} failed: {e}"));
            assert_eq!(r.status, 200);
        }
        a.metric(r#"sandgnat_worker_restarts_total{reason="max_requests"}"#)
            .is_some_and(|n| n >= 2.0)
    });
    assert_ne!(app.worker_pids(), first);
}

/// Runs requests on fresh connections until told to stop; counts failures.
fn client_loop(
    socket: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut errors = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match request_unix(&socket, "GET", "/healthz", &[]) {
                Ok(r) if r.status == 200 => {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
                Ok(r) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    errors.push(format!("status {}", r.status));
                }
                Err(e) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    errors.push(e.to_string());
                }
            }
        }
        errors
    })
}

#[test]
fn twenty_reloads_fail_no_request() {
    let app = Appliance::start("hup", "workers = 2\n", "");
    let first = app.worker_pids();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..2)
        .map(|_| client_loop(app.socket.clone(), stop.clone(), ok.clone(), failed.clone()))
        .collect();
    for _ in 0..20 {
        app.signal(libc::SIGHUP);
        app.expect_notify("RELOADING=1", 10 * SEC);
        app.expect_notify("READY=1", 20 * SEC);
    }
    stop.store(true, Ordering::SeqCst);
    let errors: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed requests: {errors:?}"
    );
    assert!(
        ok.load(Ordering::SeqCst) > 100,
        "too few requests: {}",
        ok.load(Ordering::SeqCst)
    );
    app.wait_until("old workers gone", 10 * SEC, |a| a.worker_pids().len() == 2);
    let last = app.worker_pids();
    assert!(
        last.iter().all(|p| !first.contains(p)),
        "{first:?} {last:?}"
    );
    assert_eq!(
        app.metric(r#"sandgnat_worker_restarts_total{reason="reload"}"#),
        Some(40.0)
    );
}

#[test]
fn hup_rereads_settings() {
    let mut app = Appliance::start("hupcfg", "workers = 1\n", "");
    assert_eq!(app.worker_pids().len(), 1);
    let cfg = app.dir.join("sandgnat.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("workers = 1", "workers = 3");
    std::fs::write(&cfg, text).unwrap();
    app.signal(libc::SIGHUP);
    app.expect_notify("READY=1", 20 * SEC);
    app.wait_until("3 workers", 10 * SEC, |a| a.worker_pids().len() == 3);

    // A bad value is refused and the running settings stay.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("workers = 3", "workers = 0");
    std::fs::write(&cfg, text).unwrap();
    app.signal(libc::SIGHUP);
    app.expect_notify("READY=1", 20 * SEC);
    app.wait_until("refusal logged", 5 * SEC, |a| {
        a.log_text().contains("reload refused")
    });
    assert_eq!(app.worker_pids().len(), 3);
    app.signal(libc::SIGTERM);
    assert!(app.wait_exit(20 * SEC).success());
}

#[test]
fn term_finishes_the_slow_request_then_exits_zero() {
    let mut app = Appliance::start("term", "workers = 2\ngraceful_timeout = 20\n", "");
    let socket = app.socket.clone();
    let slow =
        std::thread::spawn(move || request_unix(&socket, "GET", "/__debug/sleep?ms=1500", &[]));
    app.wait_until("request in flight", 5 * SEC, |a| {
        a.metric_sum("sandgnat_worker_pending_requests", "pid=") >= 1.0
    });
    app.signal(libc::SIGTERM);
    app.expect_notify("STOPPING=1", 5 * SEC);
    let r = slow
        .join()
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("1500"));
    let status = app.wait_exit(20 * SEC);
    assert_eq!(status.code(), Some(0));
    assert!(!app.socket.exists(), "the socket file is removed on stop");
    app.expect_event("on_exit", SEC);
}

#[test]
fn term_kills_what_outlives_graceful_timeout() {
    let mut app = Appliance::start("termkill", "workers = 1\ngraceful_timeout = 1\n", "");
    let socket = app.socket.clone();
    let _slow =
        std::thread::spawn(move || request_unix(&socket, "GET", "/__debug/sleep?ms=60000", &[]));
    app.wait_until("request in flight", 5 * SEC, |a| {
        a.metric_sum("sandgnat_worker_pending_requests", "pid=") >= 1.0
    });
    let t = Instant::now();
    app.signal(libc::SIGTERM);
    assert_eq!(app.wait_exit(15 * SEC).code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
}

#[test]
fn quit_and_int_stop_fast() {
    for sig in [libc::SIGQUIT, libc::SIGINT] {
        let mut app = Appliance::start("quit", "workers = 2\ngraceful_timeout = 60\n", "");
        let socket = app.socket.clone();
        let slow = std::thread::spawn(move || {
            request_unix(&socket, "GET", "/__debug/sleep?ms=30000", &[])
        });
        app.wait_until("request in flight", 5 * SEC, |a| {
            a.metric_sum("sandgnat_worker_pending_requests", "pid=") >= 1.0
        });
        let t = Instant::now();
        app.signal(sig);
        assert_eq!(app.wait_exit(10 * SEC).code(), Some(0));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(
            slow.join().unwrap().is_err(),
            "a fast stop cuts the slow request"
        );
    }
}

#[test]
fn ttin_and_ttou_change_the_pool() {
    let app = Appliance::start("ttin", "workers = 2\n", "");
    let start = app.worker_pids();
    app.signal(libc::SIGTTIN);
    app.wait_until("3 workers", 10 * SEC, |a| a.worker_pids().len() == 3);
    // One at a time: the kernel merges a signal sent while one is pending.
    app.signal(libc::SIGTTOU);
    app.wait_until("2 workers", 10 * SEC, |a| a.worker_pids().len() == 2);
    app.signal(libc::SIGTTOU);
    app.wait_until("1 worker", 10 * SEC, |a| a.worker_pids().len() == 1);
    // The oldest go first: the survivor is the one TTIN added.
    let left = app.worker_pids();
    assert!(!start.contains(&left[0]), "{start:?} {left:?}");
    // TTOU never goes below one worker.
    app.signal(libc::SIGTTOU);
    app.wait_until("stays at 1", 3 * SEC, |a| {
        a.log_text().matches("TTOU").count() >= 3
    });
    assert_eq!(app.worker_pids().len(), 1);
    assert_eq!(app.get("/healthz").unwrap().status, 200);
}

#[test]
fn usr1_reopens_log_files() {
    let dir = common::temp_dir("usr1logs");
    let access = dir.join("access.log");
    let moved = dir.join("access.log.1");
    let app = Appliance::start(
        "usr1",
        "workers = 1\n",
        &format!(
            "[log]\nformat = \"json\"\naccess_log = \"{}\"\n",
            access.display()
        ),
    );
    app.get("/healthz").unwrap();
    app.wait_until("first line", 5 * SEC, |_| {
        std::fs::read_to_string(&access)
            .unwrap_or_default()
            .contains("/healthz")
    });
    std::fs::rename(&access, &moved).unwrap();
    app.signal(libc::SIGUSR1);
    app.wait_until("master reopened", 5 * SEC, |a| {
        a.log_text().contains("log files reopened")
    });
    // The worker reopens on its own USR1, forwarded by the master; keep
    // asking until a line lands in the new file.
    app.wait_until("line in the new file", 5 * SEC, |a| {
        a.get("/healthz").unwrap();
        std::fs::read_to_string(&access)
            .unwrap_or_default()
            .contains("/healthz")
    });
    let old = std::fs::read_to_string(&moved).unwrap();
    assert!(
        old.contains("/healthz"),
        "the first line stayed in the moved file"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn usr2_upgrade_keeps_answering() {
    common::become_subreaper();
    let mut app = Appliance::start("usr2", "workers = 2\n", "");
    let old_master = app.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let client = client_loop(app.socket.clone(), stop.clone(), ok.clone(), failed.clone());
    app.signal(libc::SIGUSR2);
    // The new master announces itself, then the old one hands over and leaves.
    let msg = app.expect_notify("READY=1", 20 * SEC);
    let new_master: i32 = msg
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .expect("MAINPID in the new master's READY");
    assert_ne!(new_master, old_master);
    let handover = app.expect_notify("MAINPID=", 20 * SEC);
    assert!(handover.contains(&new_master.to_string()));
    assert_eq!(app.wait_exit(30 * SEC).code(), Some(0));
    // The new master serves alone now.
    let served_after = ok.load(Ordering::SeqCst);
    app.wait_until("requests after the old master left", 10 * SEC, |_| {
        ok.load(Ordering::SeqCst) > served_after + 50
    });
    stop.store(true, Ordering::SeqCst);
    let errors = client.join().unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0, "{errors:?}");
    assert!(
        app.socket.exists(),
        "the old master left the socket to the new one"
    );
    assert_eq!(app.get("/healthz").unwrap().status, 200);
    // SAFETY: kill(2).
    unsafe { libc::kill(new_master, libc::SIGTERM) };
    let mut status = 0;
    // SAFETY: waitpid on the re-parented new master (we are its subreaper).
    let reaped = unsafe { libc::waitpid(new_master, &mut status, 0) };
    assert_eq!(reaped, new_master);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}

#[test]
fn boot_failures_back_off_then_exit_with_the_reason() {
    let mut app = Appliance::spawn(
        "bootfail",
        "workers = 2\nmax_boot_failures = 4\n",
        "[debug]\nfail_worker_boot = true\n",
    );
    let status = app.wait_exit(30 * SEC);
    assert_eq!(status.code(), Some(3));
    let log = app.log_text();
    assert!(log.contains("debug.fail_worker_boot is set"), "{log}");
    assert!(log.contains("workers failed to boot 4 times"), "{log}");
    // Back-off: one attempt at a time, not a fork loop.
    let spawns = app
        .events("post_fork")
        .iter()
        .filter(|e| e["role"] == "Worker")
        .count();
    assert!(spawns <= 5, "{spawns} spawns for 4 failures");
}

#[test]
fn master_death_takes_the_workers_with_it() {
    let app = Appliance::start("pdeath", "workers = 2\n", "");
    let mut pids = app.worker_pids();
    // Every other child goes too, the front end after its drain.
    for role in ["front-end", "metrics-listener", "recorder", "job-runner"] {
        let more = app.role_pids(role);
        assert!(!more.is_empty(), "no {role}");
        pids.extend(more);
    }
    app.signal(libc::SIGKILL);
    let deadline = Instant::now() + 10 * SEC;
    for pid in pids {
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z")
        {
            assert!(Instant::now() < deadline, "child {pid} outlived its master");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn workers_are_isolated() {
    let app = Appliance::start("isolation", "workers = 1\n", "");
    let pid = app.worker_pids()[0];
    common::assert_isolated(pid);
    // The worker holds the workers' socket and none of the TCP listeners.
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let metrics_port = format!(
        "{:04X}",
        app.metrics
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap()
    );
    let metrics_inode = tcp
        .lines()
        .find(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&metrics_port))
                && l.split_whitespace().nth(3) == Some("0A")
        })
        .and_then(|l| l.split_whitespace().nth(9))
        .unwrap()
        .to_string();
    let fds = common::fd_targets(pid);
    assert!(
        !fds.iter()
            .any(|f| f == &format!("socket:[{metrics_inode}]")),
        "{fds:?}"
    );
    assert!(fds.len() < 16, "unexpected descriptors: {fds:?}");
}

/// As root, a master re-owns its state directory; one that already holds
/// someone else's files (a `paths.state_dir` typo naming /etc) or a
/// planted symlink is refused before anything in it changes.
#[test]
fn a_root_master_takes_over_no_foreign_state_dir() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only a master started as root changes owners");
        return;
    }
    let victim = common::temp_dir("statedir-victim");
    std::fs::write(victim.join("precious.conf"), "keep me").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = std::fs::metadata(&victim).unwrap();
    assert_eq!(before.uid(), 0);

    let mut app = Appliance::spawn(
        "statedir",
        "workers = 1\n",
        &format!("[paths]\nstate_dir = \"{}\"\n", victim.display()),
    );
    let status = app.wait_exit(30 * SEC);
    assert!(!status.success(), "{status}");
    let log = app.log_text();
    assert!(log.contains("refusing to take it over"), "{log}");
    let after = std::fs::metadata(&victim).unwrap();
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_eq!(after.mode() & 0o7777, 0o755);
    assert!(!victim.join("quarantine").exists());

    // The service account's own directory, with a quarantine that points
    // elsewhere: the link is not followed.
    let planted = common::temp_dir("statedir-planted");
    std::os::unix::fs::symlink(&victim, planted.join("quarantine")).unwrap();
    let given = std::process::Command::new("chown")
        .arg("nobody:nogroup")
        .arg(&planted)
        .status()
        .unwrap();
    assert!(given.success());
    let mut app = Appliance::spawn(
        "statedir-link",
        "workers = 1\n",
        &format!("[paths]\nstate_dir = \"{}\"\n", planted.display()),
    );
    let status = app.wait_exit(30 * SEC);
    assert!(!status.success(), "{status}");
    let log = app.log_text();
    assert!(log.contains("is not a directory"), "{log}");
    let after = std::fs::metadata(&victim).unwrap();
    assert_eq!((after.uid(), after.mode() & 0o7777), (0, 0o755));

    // An empty directory is taken over, as on a first start.
    let fresh = common::temp_dir("statedir-fresh");
    let app = Appliance::start(
        "statedir-fresh",
        "workers = 1\n",
        &format!("[paths]\nstate_dir = \"{}\"\n", fresh.display()),
    );
    let nobody = std::fs::metadata(&app.dir).unwrap().uid();
    assert_eq!(std::fs::metadata(&fresh).unwrap().uid(), nobody);
    drop(app);
    for d in [victim, planted, fresh] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A master that exits before READY is noticed at once, not after the
/// wait for READY runs out.
#[test]
fn a_master_that_exits_before_ready_is_noticed_at_once() {
    let mut app = Appliance::spawn("exits-early", "backlog = 0\n", "");
    let t = Instant::now();
    let exited = app.wait_ready(30 * SEC).unwrap_err();
    assert!(!exited.success());
    assert!(t.elapsed() < 10 * SEC, "noticed after {:?}", t.elapsed());
}

/// A port taken between `free_port` and the master's bind: the master
/// exits with "Address already in use" and the harness starts it again on
/// fresh ports.
#[test]
fn a_port_taken_before_the_master_binds_it_is_retried_with_new_ones() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let mut handed = Vec::new();
    let app = Appliance::start_with_ports("port-taken", "workers = 1\n", "", "", &mut || {
        let p = if handed.is_empty() {
            taken
        } else {
            common::free_port()
        };
        handed.push(p);
        p
    });
    assert_eq!(app.get("/healthz").unwrap().status, 200);
    assert!(
        !app.metrics.ends_with(&format!(":{taken}")),
        "{}",
        app.metrics
    );
    drop(app);
    assert!(handed.len() >= 6, "one retry at least: {handed:?}");
    drop(held);
}

/// One GET on a kept-alive connection: the status and whether the answer
/// said `Connection: close`; an error when the connection ended first.
fn ask_on(s: &mut std::os::unix::net::UnixStream, path: &str) -> Result<(u16, bool), String> {
    use std::io::Write;
    write!(s, "GET {path} HTTP/1.1\r\nHost: sandgnat\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    common::h1::read_answer(s).map(|a| (a.status, a.close))
}

/// The inode of the listening socket bound at `path` (/proc/net/unix).
fn listening_inode(path: &std::path::Path) -> String {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let path = path.display().to_string();
    table
        .lines()
        // Accepted connections carry the path too; the listener is the
        // one flagged as accepting (__SO_ACCEPTCON).
        .find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(7) == Some(&path.as_str()) && f.get(3) == Some(&"00010000")
        })
        .and_then(|l| l.split_whitespace().nth(6))
        .unwrap_or_else(|| panic!("{path} is not in /proc/net/unix"))
        .to_string()
}

/// A worker that stops (here, replaced by a reload) does not close a
/// connection whose last answer said keep-alive: the client (the front
/// end) may be sending its next request on it at that very moment, and
/// a request lost that way cannot be told from one that was processed.
/// The next request is answered, with `Connection: close`.
#[test]
fn a_stopping_worker_answers_the_next_request_on_a_kept_connection() {
    let app = Appliance::start("kept", "workers = 1\n", "");
    let old = app.worker_pids();
    assert_eq!(old.len(), 1);
    let mut s = std::os::unix::net::UnixStream::connect(&app.socket).unwrap();
    s.set_read_timeout(Some(10 * SEC)).unwrap();
    assert_eq!(ask_on(&mut s, "/healthz"), Ok((200, false)));
    let listener = format!("socket:[{}]", listening_inode(&app.socket));
    app.signal(libc::SIGHUP);
    // Stopped: it no longer holds the listening socket (it takes no new
    // connection), only the connection it kept; or it is gone.
    app.wait_until("the old worker stopped", 30 * SEC, |_| {
        std::fs::read_dir(format!("/proc/{}/fd", old[0])).map_or(true, |fds| {
            !fds.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .any(|t| t.display().to_string() == listener)
        })
    });
    assert_eq!(
        ask_on(&mut s, "/healthz"),
        Ok((200, true)),
        "the kept connection was closed under its next request"
    );
    // And then it ends, so the stopping worker can leave.
    let mut rest = Vec::new();
    assert_eq!(std::io::Read::read_to_end(&mut s, &mut rest).unwrap(), 0);
    app.wait_until("the old worker gone", 20 * SEC, |a| {
        !a.worker_pids().contains(&old[0])
    });
}
