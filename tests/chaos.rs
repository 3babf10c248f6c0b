//! The chaos run (issue 16). Keep-alive clients submit unique samples
//! through the TLS front end for a bounded time, while a driver first sends
//! HUPs alone, then SIGKILLs workers, the recorder, a job runner and the
//! front end (with HUPs among them), then stops the database as a power
//! cut would and starts it again. Every 202 is then reconciled against the
//! database and the quarantine.
//!
//! It fails on one lost or half-recorded submission (an accepted sample
//! without its analysis, its detonation job, its two audit rows, its
//! idempotency record, or its file with the right sha256; or recorded
//! twice), on any request that failed while only HUPs were being sent, on
//! a submission that never got its 202 once everything was back, and on
//! `/healthz` failing.
//!
//! The clients are honest ones, as `sandgnat submit` is: every try of one
//! sample carries the same `Idempotency-Key` and the same bytes, and a
//! 502, 503 or 429, or a connection that broke, is tried again (a broken
//! connection or a 502 may hide a recorded submission; the key makes the
//! retry get its first answer). The database is the test's own server
//! (`common::pg`), never the shared server.
//!
//! `SANDGNAT_CHAOS_REPORT=path` appends the run's figures to `path` as
//! one JSON line (benches/RESULTS.md records runs).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::h1::{read_answer_async, Answer};
use common::keepalive::{tls_for, Proto};
use common::pg::Server;
use common::Appliance;
use pingora_rustls::{ServerName, TlsConnector};
use rand::seq::SliceRandom;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SEC: Duration = Duration::from_secs(1);
/// Keep-alive clients posting samples.
const CLIENTS: usize = 4;
/// HUPs of the first phase, at an operator's pace.
const HUPS: usize = 10;
/// SIGKILLs of each kind in the second phase, and HUPs among them.
const KILLS_EACH: usize = 4;
const HUPS_AMONG_KILLS: usize = 6;
/// How long the database is down.
const OUTAGE: Duration = Duration::from_secs(5);
/// The longest one sample is tried for.
const GIVE_UP: Duration = Duration::from_secs(60);
/// The longest a `Retry-After` is honoured for (the service's is 5 s,
/// more than this run can spend waiting).
const MAX_PAUSE: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Event {
    Hup,
    KillWorker,
    KillRecorder,
    KillRunner,
    KillFrontEnd,
    DatabaseDown,
    DatabaseUp,
}

/// What the driver did, and when.
#[derive(Default)]
struct Driven(Mutex<Vec<(Instant, Event)>>);

impl Driven {
    fn note(&self, e: Event) {
        self.0.lock().unwrap().push((Instant::now(), e));
    }

    fn count(&self, e: Event) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, x)| *x == e)
            .count()
    }

    fn any_between(&self, e: Event, from: Instant, to: Instant) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|(at, x)| *x == e && *at >= from && *at <= to)
    }
}

#[derive(Debug)]
enum Outcome {
    Accepted(serde_json::Value),
    Status(u16, String),
    Transport(String),
}

/// One try of one sample.
struct Attempt {
    start: Instant,
    end: Instant,
    outcome: Outcome,
}

/// One sample, with every try of it.
struct Submission {
    idempotency_key: String,
    sha256: String,
    attempts: Vec<Attempt>,
    gave_up: Option<String>,
}

impl Submission {
    fn accepted(&self) -> Option<&serde_json::Value> {
        self.attempts.iter().find_map(|a| match &a.outcome {
            Outcome::Accepted(v) => Some(v),
            _ => None,
        })
    }
}

type Tls = pingora_rustls::ClientTlsStream<TcpStream>;

async fn connect(addr: &str, tls: &TlsConnector) -> Result<Tls, String> {
    let made = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from("127.0.0.1").unwrap();
        tls.connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))
    };
    tokio::time::timeout(10 * SEC, made)
        .await
        .unwrap_or_else(|_| Err("connect: no TLS connection within 10 s".into()))
}

/// One POST on the kept connection (made first if there is none).
async fn post(
    conn: &mut Option<Tls>,
    addr: &str,
    tls: &TlsConnector,
    head: &str,
    body: &[u8],
) -> Result<Answer, String> {
    if conn.is_none() {
        *conn = Some(connect(addr, tls).await?);
    }
    let s = conn.as_mut().expect("just made");
    let exchange = async {
        s.write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        s.write_all(body).await.map_err(|e| format!("write: {e}"))?;
        s.flush().await.map_err(|e| format!("write: {e}"))?;
        read_answer_async(s).await
    };
    let answer = tokio::time::timeout(30 * SEC, exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 30 s".into()));
    if !matches!(&answer, Ok(a) if !a.close) {
        *conn = None;
    }
    answer
}

/// A sample no other has: small ones mostly, one in eight past the size
/// kept in memory (so it goes through a spool file).
fn sample(client: usize, i: u64) -> Vec<u8> {
    let mut rng = rand::thread_rng();
    let size = if i.is_multiple_of(8) {
        1_500_000
    } else {
        rng.gen_range(64..16_384)
    };
    let mut bytes = format!("chaos sample {client} {i} {:016x}\n", rng.gen::<u64>()).into_bytes();
    let head = bytes.len();
    bytes.resize(size.max(head), 0);
    rng.fill(&mut bytes[head..]);
    bytes
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A client: one sample after another until `stop`, each tried until it
/// is accepted, refused for good, or `GIVE_UP` passed.
async fn client(
    n: usize,
    addr: String,
    tls: TlsConnector,
    api_key: String,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
) -> Vec<Submission> {
    let mut conn = None;
    let mut done = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let body = sample(n, i);
        let mut sub = Submission {
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            sha256: hex(Sha256::digest(&body)),
            attempts: Vec::new(),
            gave_up: None,
        };
        let head = format!(
            "POST /v1/submit HTTP/1.1\r\nHost: sandgnat\r\nX-API-Key: {api_key}\r\n\
             Content-Type: application/octet-stream\r\nIdempotency-Key: {}\r\n\
             Content-Length: {}\r\n\r\n",
            sub.idempotency_key,
            body.len()
        );
        let began = Instant::now();
        loop {
            let start = Instant::now();
            let (outcome, pause) = match post(&mut conn, &addr, &tls, &head, &body).await {
                Ok(a) if a.status == 202 => (Outcome::Accepted(a.json()), None),
                Ok(a) => {
                    let code = a.json()["error"].as_str().unwrap_or("").to_string();
                    let again = matches!(a.status, 429 | 502 | 503);
                    let pause = again.then(|| {
                        a.retry_after
                            .unwrap_or(Duration::from_millis(100))
                            .min(MAX_PAUSE)
                    });
                    (Outcome::Status(a.status, code), pause)
                }
                Err(e) => (Outcome::Transport(e), Some(Duration::from_millis(50))),
            };
            let last = matches!(outcome, Outcome::Accepted(_)) || pause.is_none();
            if let Outcome::Status(status, code) = &outcome {
                if pause.is_none() {
                    sub.gave_up = Some(format!("refused: {status} {code}"));
                }
            }
            sub.attempts.push(Attempt {
                start,
                end: Instant::now(),
                outcome,
            });
            if last {
                break;
            }
            if began.elapsed() > GIVE_UP {
                sub.gave_up = Some(format!("not accepted within {GIVE_UP:?}"));
                break;
            }
            tokio::time::sleep(pause.unwrap_or_default()).await;
        }
        if sub.accepted().is_some() {
            accepted.fetch_add(1, Ordering::SeqCst);
        }
        done.push(sub);
    }
    done
}

/// One `/healthz` on a fresh connection, as a load balancer asks it.
async fn probe(addr: &str, tls: &TlsConnector) -> Result<u16, String> {
    let mut conn = Some(connect(addr, tls).await?);
    let s = conn.as_mut().expect("just made");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: sandgnat\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    read_answer_async(s).await.map(|a| a.status)
}

struct Probe {
    start: Instant,
    end: Instant,
    result: Result<u16, String>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn wait_for(accepted: &AtomicU64, more: u64, what: &str) {
    let until = accepted.load(Ordering::SeqCst) + more;
    let deadline = Instant::now() + 60 * SEC;
    while accepted.load(Ordering::SeqCst) < until {
        assert!(Instant::now() < deadline, "no progress: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every child the master keeps, each of the current generation only.
fn settled(app: &Appliance) -> bool {
    app.role_pids("worker").len() == 2
        && app.role_pids("front-end").len() == 1
        && app.role_pids("recorder").len() == 1
        && app.role_pids("job-runner").len() == 1
}

/// One analysis as the database has it.
struct Row {
    sha256: String,
    storage_path: String,
    detonations: u64,
    audit: String,
    analyses_of_sample: u64,
    idempotency_key: String,
}

const RECONCILE: &str = "SELECT a.id, a.sample_sha256, s.storage_path,
       (SELECT count(*) FROM jobs j WHERE j.analysis_id = a.id AND j.kind = 'detonate'),
       coalesce((SELECT string_agg(l.event, ',' ORDER BY l.id)
                   FROM analysis_audit_log l WHERE l.analysis_id = a.id), ''),
       (SELECT count(*) FROM analyses b WHERE b.sample_sha256 = a.sample_sha256),
       coalesce((SELECT k.key FROM idempotency_keys k WHERE k.analysis_id = a.id), '')
  FROM analyses a JOIN samples s ON s.sha256 = a.sample_sha256";

#[test]
fn chaos_loses_no_submission() {
    let began = Instant::now();
    let db = Server::start("chaos");
    let app = Appliance::start_with(
        "chaos",
        "workers = 2\ngraceful_timeout = 10\n",
        "rate_limit_per_ip = 0\nrate_limit_per_key = 0\n",
        &format!("[database]\nurl = \"{}\"\n[queue]\nrunners = 1\n", db.url()),
    );
    let api_key = app.new_key("submitter");
    let tls = tls_for(&app, Proto::Http1);
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let driven = Arc::new(Driven::default());

    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (addr, tls, key) = (app.tls.clone(), tls.clone(), api_key.clone());
            let (stop, accepted) = (stop.clone(), accepted.clone());
            std::thread::spawn(move || {
                runtime().block_on(client(n, addr, tls, key, stop, accepted))
            })
        })
        .collect();
    let probing = Arc::new(AtomicBool::new(true));
    let monitor = {
        let (addr, tls, probing) = (app.tls.clone(), tls.clone(), probing.clone());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut probes = Vec::new();
                while probing.load(Ordering::SeqCst) {
                    let start = Instant::now();
                    let result = tokio::time::timeout(10 * SEC, probe(&addr, &tls))
                        .await
                        .unwrap_or_else(|_| Err("no answer within 10 s".into()));
                    probes.push(Probe {
                        start,
                        end: Instant::now(),
                        result,
                    });
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                probes
            })
        })
    };
    wait_for(&accepted, 50, "before the first HUP");

    // 1. HUPs alone: no request may fail.
    let hups_began = Instant::now();
    for _ in 0..HUPS {
        app.signal(libc::SIGHUP);
        driven.note(Event::Hup);
        app.expect_notify("RELOADING=1", 10 * SEC);
        app.expect_notify("READY=1", 30 * SEC);
        std::thread::sleep(Duration::from_millis(750));
    }
    app.wait_until("the reloads' retired processes gone", 60 * SEC, settled);
    let hups_ended = Instant::now();

    // 2. SIGKILLs, with HUPs among them.
    let mut plan = vec![Event::Hup; HUPS_AMONG_KILLS];
    for e in [
        Event::KillWorker,
        Event::KillRecorder,
        Event::KillRunner,
        Event::KillFrontEnd,
    ] {
        plan.extend(std::iter::repeat_n(e, KILLS_EACH));
    }
    plan.shuffle(&mut rand::thread_rng());
    for e in plan {
        let role = match e {
            Event::Hup => {
                app.signal(libc::SIGHUP);
                driven.note(e);
                None
            }
            Event::KillWorker => Some("worker"),
            Event::KillRecorder => Some("recorder"),
            Event::KillRunner => Some("job-runner"),
            Event::KillFrontEnd => Some("front-end"),
            _ => unreachable!("not in the plan"),
        };
        if let Some(role) = role {
            // The newest of its role: the one serving (workers: any).
            let pids = app.role_pids(role);
            let pid = if role == "worker" {
                pids.choose(&mut rand::thread_rng()).copied()
            } else {
                pids.last().copied()
            };
            if let Some(pid) = pid {
                driven.note(e);
                // SAFETY: kill(2) on a child of our appliance.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let pause = rand::thread_rng().gen_range(300..700);
        std::thread::sleep(Duration::from_millis(pause));
        app.drain_notifications();
    }
    app.wait_until("every role back", 60 * SEC, |a| {
        a.drain_notifications();
        settled(a)
    });
    wait_for(&accepted, 100, "after the kills");

    // 3. The database goes away as in a power cut, and comes back.
    db.crash();
    driven.note(Event::DatabaseDown);
    std::thread::sleep(OUTAGE);
    db.up();
    driven.note(Event::DatabaseUp);
    wait_for(&accepted, 100, "after the database came back");

    stop.store(true, Ordering::SeqCst);
    let submissions: Vec<Submission> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    probing.store(false, Ordering::SeqCst);
    let probes = monitor.join().expect("monitor thread");

    // What every 202 promised must be there, once.
    let mut rows: HashMap<String, Row> = HashMap::new();
    for line in db.query(RECONCILE).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 7, "{line:?}");
        rows.insert(
            f[0].to_string(),
            Row {
                sha256: f[1].to_string(),
                storage_path: f[2].to_string(),
                detonations: f[3].parse().unwrap(),
                audit: f[4].to_string(),
                analyses_of_sample: f[5].parse().unwrap(),
                idempotency_key: f[6].to_string(),
            },
        );
    }
    let mut lost = Vec::new();
    for sub in &submissions {
        let Some(answer) = sub.accepted() else {
            continue;
        };
        let id = answer["analysis_id"].as_str().unwrap_or_default();
        let mut wrong = |why: String| lost.push(format!("{} ({id}): {why}", sub.sha256));
        if answer["sha256"] != sub.sha256.as_str() {
            wrong(format!("the 202 names sha256 {}", answer["sha256"]));
        }
        let Some(row) = rows.get(id) else {
            wrong("no analysis".into());
            continue;
        };
        if row.sha256 != sub.sha256 {
            wrong(format!("the analysis is of {}", row.sha256));
        }
        if row.detonations != 1 {
            wrong(format!("{} detonation jobs", row.detonations));
        }
        // Its first two; the static analysis adds its own later.
        if !row.audit.starts_with("submitted,scanned") {
            wrong(format!("audit rows {:?}", row.audit));
        }
        if row.analyses_of_sample != 1 {
            wrong(format!("recorded {} times", row.analyses_of_sample));
        }
        if row.idempotency_key != sub.idempotency_key {
            wrong(format!("idempotency key {:?}", row.idempotency_key));
        }
        match std::fs::read(&row.storage_path) {
            Ok(bytes) if hex(Sha256::digest(&bytes)) == sub.sha256 => {}
            Ok(_) => wrong(format!("{} holds other bytes", row.storage_path)),
            Err(e) => wrong(format!("{}: {e}", row.storage_path)),
        }
    }

    // The figures of the run.
    let mut causes: BTreeMap<String, u64> = BTreeMap::new();
    let mut during_hups = Vec::new();
    let mut requests = 0u64;
    for sub in &submissions {
        for a in &sub.attempts {
            requests += 1;
            let cause = match &a.outcome {
                Outcome::Accepted(_) => continue,
                Outcome::Status(s, code) => format!("{s} {code}"),
                Outcome::Transport(e) => {
                    // Which step broke, without the OS's wording.
                    format!("connection: {}", e.split(':').next().unwrap_or(e))
                }
            };
            *causes.entry(cause.clone()).or_default() += 1;
            if a.start >= hups_began && a.end <= hups_ended {
                during_hups.push(cause);
            }
        }
    }
    let gave_up: Vec<String> = submissions
        .iter()
        .filter_map(|s| s.gave_up.as_ref().map(|g| format!("{}: {g}", s.sha256)))
        .collect();
    let mut healthz_failed = Vec::new();
    let mut healthz_cut = 0;
    for p in &probes {
        match &p.result {
            Ok(200) => {}
            // A probe whose connection's front end was killed under it is
            // what a balancer sees then; counted, not failed.
            Err(_) if driven.any_between(Event::KillFrontEnd, p.start, p.end) => healthz_cut += 1,
            other => healthz_failed.push(format!("{other:?}")),
        }
    }
    let report = serde_json::json!({
        "seconds": began.elapsed().as_secs(),
        "clients": CLIENTS,
        "requests": requests,
        "samples": submissions.len(),
        "accepted": submissions.iter().filter(|s| s.accepted().is_some()).count(),
        "tried_more_than_once": submissions.iter().filter(|s| s.attempts.len() > 1).count(),
        "hups": driven.count(Event::Hup),
        "kills": {
            "worker": driven.count(Event::KillWorker),
            "recorder": driven.count(Event::KillRecorder),
            "job_runner": driven.count(Event::KillRunner),
            "front_end": driven.count(Event::KillFrontEnd),
        },
        "database_outage_s": OUTAGE.as_secs(),
        "failed_tries_by_cause": causes,
        "failed_during_hups": during_hups.len(),
        "healthz": {
            "probes": probes.len(),
            "failed": healthz_failed.len(),
            "cut_by_a_front_end_kill": healthz_cut,
        },
        "lost_or_half_recorded": lost.len(),
        "never_accepted": gave_up.len(),
    });
    eprintln!("chaos run: {report:#}");
    if let Some(path) = std::env::var_os("SANDGNAT_CHAOS_REPORT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open SANDGNAT_CHAOS_REPORT");
        writeln!(f, "{report}").unwrap();
    }

    assert!(lost.is_empty(), "lost or half-recorded: {lost:#?}");
    assert!(
        during_hups.is_empty(),
        "requests failed while only HUPs were sent: {during_hups:?}"
    );
    assert!(gave_up.is_empty(), "never accepted: {gave_up:#?}");
    assert!(
        healthz_failed.is_empty(),
        "/healthz failed: {healthz_failed:?}"
    );
}
