//! The job runners end to end, through the real binary and a database of
//! its own: a submission's static analysis lands on the analysis, a
//! webhook reaches a local receiver signed and is retried after a 500, a
//! webhook to a private address is refused, and the master supervises the
//! runners (a killed runner is replaced, HUP replaces them, they hold no
//! listening socket).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use common::db::TestDb;
use common::{request_unix_body, Appliance};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SEC: Duration = Duration::from_secs(1);
const SECRET: &str = "test-webhook-secret";

fn start(tag: &str, db: &TestDb, extra: &str) -> Appliance {
    Appliance::start(
        tag,
        "workers = 1\n",
        &format!("[database]\nurl = \"{}\"\n{extra}", db.url()),
    )
}

fn analysis(app: &Appliance, key: &str, id: &str) -> Value {
    app.get_with_key(&format!("/v1/analyses/{id}"), key).json()
}

/// Polls the analysis until `cond` holds; returns it.
fn wait_analysis(
    app: &Appliance,
    key: &str,
    id: &str,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    app.wait_until(what, 30 * SEC, |a| {
        last = analysis(a, key, id);
        cond(&last)
    });
    last
}

/// What the bridge does for the detonation: claim it and complete it.
fn detonate(app: &Appliance, bridge: &str, analysis_id: &str) {
    let r = app.post_json(
        bridge,
        "/v1/queues/analysis/claim",
        json!({"max_jobs": 1, "lease_seconds": 60}),
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

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn job_of<'a>(analysis: &'a Value, kind: &str) -> &'a Value {
    analysis["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} job: {analysis}"))
}

#[test]
fn static_analysis_lands_on_the_analysis() {
    let db = TestDb::create("runner_static");
    let app = start(
        "runner-static",
        &db,
        "[intake]\nstatic_analysis_enabled = true\n",
    );
    let submitter = app.new_key("submitter");
    let reader = app.new_key("reader");
    let bridge = app.new_key("bridge");
    let admin = app.new_key("admin");

    // A real executable of this machine; never run, only read.
    let exe = std::fs::read("/bin/true").unwrap();
    let sub = app.submit(&submitter, &exe, &[("X-Filename", "true")]);
    assert_eq!(sub.status, 202, "{}", sub.body);
    let id = sub.json()["analysis_id"].as_str().unwrap().to_string();

    let seen = wait_analysis(&app, &reader, &id, "the static result", |v| {
        v["results"]["static"].is_object()
    });
    let st = &seen["results"]["static"];
    assert_eq!(st["file_type"], "elf", "{st}");
    assert_eq!(st["size"], exe.len() as u64);
    assert_eq!(st["truncated"], false);
    let entropy = st["entropy"].as_f64().unwrap();
    assert!(entropy > 1.0 && entropy < 8.0, "{entropy}");
    let x = &st["executable"];
    assert_eq!(x["format"], "elf", "{st}");
    assert_eq!(x["arch"], std::env::consts::ARCH, "{x}");
    assert!(
        x["libraries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("libc.so")),
        "{x}"
    );
    let imports: Vec<&str> = x["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    assert!(imports.contains(&"__libc_start_main"), "{imports:?}");
    assert!(st["tlsh"].as_str().unwrap().starts_with("T1"), "{st}");
    // The static job is done, the detonation is not: still running.
    assert_eq!(job_of(&seen, "static")["state"], "completed");
    assert_eq!(seen["status"], "running");

    detonate(&app, &bridge, &id);
    let done = analysis(&app, &reader, &id);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["results"]["detonate"]["verdict"], "clean");
    assert!(done["results"]["static"].is_object());

    // The runner's work is in the audit trail under its own name.
    let audit = app
        .get_with_key(&format!("/v1/audit?analysis_id={id}"), &admin)
        .json();
    let by_runner = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "job_completed" && e["details"]["kind"] == "static")
        .unwrap_or_else(|| panic!("{audit}"));
    assert!(
        by_runner["actor"].as_str().unwrap().starts_with("runner:"),
        "{by_runner}"
    );
    app.wait_until("the job counted", 10 * SEC, |a| {
        a.metric(r#"sandgnat_job_runner_jobs_total{kind="static",outcome="completed"}"#)
            == Some(1.0)
    });
}

/// One request a receiver got.
struct Delivery {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A webhook receiver on loopback that answers the given statuses in turn
/// (the last one from then on) and hands each request to the test.
fn receiver(statuses: Vec<u16>) -> (String, mpsc::Receiver<Delivery>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(10 * SEC)).unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut headers = HashMap::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            headers.insert(":request".to_string(), line.trim().to_string());
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                let (k, v) = line.split_once(':').unwrap();
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
            let len: usize = headers["content-length"].parse().unwrap();
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let status = *statuses.get(n).or(statuses.last()).unwrap();
            let text = if status == 200 { "ok" } else { "try later" };
            write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            )
            .unwrap();
            let _ = tx.send(Delivery { headers, body });
        }
    });
    (addr, rx)
}

/// HMAC-SHA256 written out here (RFC 2104), independent of the crate the
/// appliance signs with.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    hex::encode(outer)
}

#[test]
fn webhook_is_signed_and_retried_after_a_500() {
    let db = TestDb::create("runner_hook");
    let (addr, deliveries) = receiver(vec![500, 200]);
    let app = start(
        "runner-hook",
        &db,
        &format!(
            "[intake]\nstatic_analysis_enabled = false\n\
             [queue]\nwebhook_allow_private = true\nwebhook_secret = \"{SECRET}\"\nretry_base = 0.2\n"
        ),
    );
    let submitter = app.new_key("submitter");
    let reader = app.new_key("reader");
    let bridge = app.new_key("bridge");
    let url = format!("http://{addr}/hooks/sandgnat?src=test");
    let sub = request_unix_body(
        &app.socket,
        "POST",
        &format!("/v1/submit?callback_url={}", encode(&url)),
        &[("X-API-Key", &submitter), ("X-Filename", "hooked.bin")],
        Some(b"a sample whose analysis is announced"),
    )
    .unwrap();
    assert_eq!(sub.status, 202, "{}", sub.body);
    let sub = sub.json();
    let id = sub["analysis_id"].as_str().unwrap().to_string();
    // Held until the analysis finishes: nothing is sent yet.
    let seen = analysis(&app, &reader, &id);
    assert_eq!(job_of(&seen, "webhook")["state"], "scheduled");
    assert!(deliveries.try_recv().is_err());

    detonate(&app, &bridge, &id);
    let first = deliveries.recv_timeout(30 * SEC).expect("first delivery");
    let second = deliveries.recv_timeout(30 * SEC).expect("the retry");

    for d in [&first, &second] {
        assert_eq!(
            d.headers[":request"],
            "POST /hooks/sandgnat?src=test HTTP/1.1"
        );
        assert_eq!(d.headers["host"], addr);
        assert_eq!(d.headers["content-type"], "application/json");
        let want = format!("sha256={}", hmac_sha256(SECRET.as_bytes(), &d.body));
        assert_eq!(d.headers["x-sandgnat-signature"], want);
    }
    let a: Value = serde_json::from_slice(&first.body).unwrap();
    let b: Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(b["analysis_id"], id.as_str());
    assert_eq!(b["status"], "completed");
    assert_eq!(b["sha256"], sub["sha256"]);
    assert_eq!(b["filename"], "hooked.bin");
    assert_eq!(b["results"], json!(["detonate"]));
    assert!(b["yara"].is_array());
    assert!(b["finished_at"].is_string());
    // One notification, two attempts: same delivery id.
    assert_eq!(a["delivery"], b["delivery"]);
    assert_eq!(
        first.headers["x-sandgnat-delivery"],
        b["delivery"].as_str().unwrap()
    );
    assert_eq!(
        (a["attempt"].as_i64(), b["attempt"].as_i64()),
        (Some(1), Some(2))
    );

    // (The analysis and its jobs are two reads: wait for both to show it.)
    let done = wait_analysis(&app, &reader, &id, "the webhook completed", |v| {
        job_of(v, "webhook")["state"] == "completed" && v["results"]["webhook"].is_object()
    });
    assert_eq!(done["results"]["webhook"]["http_status"], 200);
    let errors = &job_of(&done, "webhook")["errors"];
    assert!(
        errors[0]["error"].as_str().unwrap().contains("HTTP 500"),
        "{errors}"
    );
    // The webhook reports on the analysis; it does not change it.
    assert_eq!(done["status"], "completed");
}

#[test]
fn webhook_to_loopback_is_refused_without_retry() {
    let db = TestDb::create("runner_refuse");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = start(
        "runner-refuse",
        &db,
        "[intake]\nstatic_analysis_enabled = false\n[queue]\nretry_base = 0.2\n",
    );
    let submitter = app.new_key("submitter");
    let reader = app.new_key("reader");
    let bridge = app.new_key("bridge");
    let sub = request_unix_body(
        &app.socket,
        "POST",
        &format!(
            "/v1/submit?callback_url={}",
            encode(&format!("http://{addr}/hook"))
        ),
        &[("X-API-Key", &submitter)],
        Some(b"a sample with a callback to loopback"),
    )
    .unwrap();
    assert_eq!(sub.status, 202, "{}", sub.body);
    let id = sub.json()["analysis_id"].as_str().unwrap().to_string();
    detonate(&app, &bridge, &id);
    let seen = wait_analysis(&app, &reader, &id, "the webhook discarded", |v| {
        job_of(v, "webhook")["state"] == "discarded"
    });
    let hook = job_of(&seen, "webhook");
    assert_eq!(hook["attempt"], 1, "no retry: {hook}");
    let error = hook["errors"][0]["error"].as_str().unwrap();
    assert!(error.contains("loopback"), "{error}");
    assert!(error.contains("webhook_allow_private"), "{error}");
    // Nothing ever connected.
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    assert_eq!(seen["status"], "completed");
    app.wait_until("the refusal counted", 10 * SEC, |a| {
        a.metric(r#"sandgnat_job_runner_jobs_total{kind="webhook",outcome="discarded"}"#)
            == Some(1.0)
    });
}

/// Pids of the live job runners, from metrics.
fn runner_pids(app: &Appliance) -> Vec<u32> {
    let mut pids: Vec<u32> = app
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("sandgnat_job_runner_busy{pid=\""))
        .filter_map(|l| l.split('"').nth(1)?.parse().ok())
        .collect();
    pids.sort();
    pids
}

/// Inodes of every listening socket on this machine (TCP and Unix).
fn listening_inodes() -> Vec<String> {
    let mut inodes = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for l in std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(3) == Some(&"0A") {
                inodes.push(f[9].to_string());
            }
        }
    }
    for l in std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .skip(1)
    {
        let f: Vec<&str> = l.split_whitespace().collect();
        // __SO_ACCEPTCON: a listening socket.
        if f.get(3) == Some(&"00010000") {
            inodes.push(f[6].to_string());
        }
    }
    inodes
}

#[test]
fn runners_are_supervised_and_isolated() {
    let db = TestDb::create("runner_sup");
    let mut app = start("runner-sup", &db, "[queue]\nrunners = 2\n");
    app.wait_until("two runners", 20 * SEC, |a| runner_pids(a).len() == 2);
    let runners = runner_pids(&app);
    let workers = app.worker_pids();
    assert_eq!(workers.len(), 1, "runners are not counted as workers");
    assert!(runners.iter().all(|p| !workers.contains(p)));

    // Isolated like a worker, and holding no listening socket.
    let pid = runners[0];
    common::assert_isolated(pid);
    let listening = listening_inodes();
    let fds = common::fd_targets(pid);
    assert!(
        !fds.iter()
            .any(|f| listening.iter().any(|i| f == &format!("socket:[{i}]"))),
        "a runner holds a listening socket: {fds:?}"
    );

    // Killed: replaced, counted as a runner crash, not a worker's.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    app.wait_until("the crash counted", 10 * SEC, |a| {
        a.metric(r#"sandgnat_job_runner_restarts_total{reason="crash"}"#) == Some(1.0)
    });
    app.wait_until("a replacement", 10 * SEC, |a| {
        let now = runner_pids(a);
        now.len() == 2 && !now.contains(&pid)
    });
    assert_eq!(
        app.metric(r#"sandgnat_worker_restarts_total{reason="crash"}"#),
        Some(0.0)
    );
    assert_eq!(app.worker_pids(), workers);

    // HUP: a new generation of runners; the old ones leave.
    let before = runner_pids(&app);
    app.signal(libc::SIGHUP);
    app.expect_notify("RELOADING=1", 10 * SEC);
    app.wait_until("runners replaced", 20 * SEC, |a| {
        let now = runner_pids(a);
        now.len() == 2 && now.iter().all(|p| !before.contains(p))
    });
    assert_eq!(
        app.metric(r#"sandgnat_job_runner_restarts_total{reason="reload"}"#),
        Some(2.0)
    );

    // TERM stops everyone, runners included.
    let after = runner_pids(&app);
    app.signal(libc::SIGTERM);
    assert_eq!(app.wait_exit(20 * SEC).code(), Some(0));
    let left = still_alive(&after);
    assert!(left.is_empty(), "runners {left:?} outlived the master");
}

#[test]
fn a_runner_stuck_in_an_analysis_is_aborted_and_replaced() {
    let db = TestDb::create("runner_hang");
    // `debug.fault_injection` (on in every test appliance) makes the
    // analysis of a sample with this name hang like a stuck parser.
    let app = Appliance::start(
        "runner-hang",
        "workers = 1
timeout = 2
",
        &format!("[database]\nurl = \"{}\"\n[queue]\nrunners = 1\n", db.url()),
    );
    app.wait_until("the runner", 20 * SEC, |a| runner_pids(a).len() == 1);
    let stuck = runner_pids(&app)[0];
    let submitter = app.new_key("submitter");
    let sub = app.submit(
        &submitter,
        b"makes the parser hang",
        &[("X-Filename", "__debug_hang__")],
    );
    assert_eq!(sub.status, 202, "{}", sub.body);
    // Busy, then silent: aborted after `timeout`, naming the job it held.
    let abort = app.expect_event("worker_abort", 20 * SEC);
    assert_eq!(abort["pid"].as_u64(), Some(u64::from(stuck)), "{abort}");
    assert!(
        abort["request"]
            .as_str()
            .unwrap()
            .starts_with("static job "),
        "{abort}"
    );
    app.wait_until("the timeout counted", 10 * SEC, |a| {
        a.metric(r#"sandgnat_job_runner_restarts_total{reason="timeout"}"#) == Some(1.0)
    });
    app.wait_until("a replacement", 10 * SEC, |a| {
        let now = runner_pids(a);
        now.len() == 1 && now[0] != stuck
    });
    assert_eq!(
        app.metric(r#"sandgnat_worker_restarts_total{reason="timeout"}"#),
        Some(0.0)
    );
}

/// Those of `pids` still alive (not zombies).
fn still_alive(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| !s.contains(") Z"))
                .unwrap_or(false)
        })
        .collect()
}
