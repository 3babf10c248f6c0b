//! Several nodes on one database and one Redis (`common::cluster`): what
//! one node does is seen by the others (a revoked key, rate limits),
//! every row says which node wrote it, the run-once work moves to another
//! node when its holder dies or freezes, and retention deletes old bytes
//! while the record stays. The first tests keep each sample on the disk of
//! the node that took it (the local backend); the `with_s3_` ones share
//! one bucket (`common::s3`, a Garage on loopback), so any node serves any
//! sample: submitted through one node, claimed, downloaded and analysed
//! through the other, the webhook once; a node killed mid-run loses none
//! of the samples it acknowledged; the lead's retention empties the bucket
//! of old bytes.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::cluster::{Cluster, Spec};
use common::s3::Garage;
use common::{request_unix, Appliance, Response};

const SEC: Duration = Duration::from_secs(1);

/// Nodes of one worker each, with `shared` for every node's settings.
fn one_worker(shared: impl Into<String>) -> Spec {
    Spec {
        server: "workers = 1\n".into(),
        shared: shared.into(),
        ..Spec::default()
    }
}

fn cluster(tag: &str, count: usize, spec: Spec) -> Option<Cluster> {
    let c = Cluster::start(tag, count, spec);
    if c.is_none() {
        eprintln!("SKIPPED: no redis-server on this machine");
    }
    c
}

/// `n` requests for `/healthz` with `key` to a node's front end over
/// plain HTTP, on kept-alive connections (a new one after an answer that
/// closes its connection, as a 429 does); their statuses.
fn burst(node: &Appliance, key: &str, n: usize) -> Vec<u16> {
    let mut conn: Option<TcpStream> = None;
    let mut statuses = Vec::new();
    while statuses.len() < n {
        let s = conn.get_or_insert_with(|| {
            let stream = TcpStream::connect(&node.plain).unwrap();
            stream.set_read_timeout(Some(10 * SEC)).unwrap();
            stream
        });
        write!(
            s,
            "GET /healthz HTTP/1.1\r\nHost: sandgnat\r\nX-API-Key: {key}\r\n\r\n"
        )
        .unwrap();
        let answer = common::h1::read_answer(s).unwrap();
        statuses.push(answer.status);
        if answer.close {
            conn = None;
        }
    }
    statuses
}

/// Sleeps until just after the next wall-clock second starts: the shared
/// counters are per second of the clock.
fn at_the_next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(
        SEC - Duration::from_nanos(now.subsec_nanos() as u64) + 20 * Duration::from_millis(1),
    );
}

fn audit(node: &Appliance, admin: &str, analysis: &str) -> Vec<Value> {
    let r = node.get_with_key(&format!("/v1/audit?analysis_id={analysis}"), admin);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["entries"].as_array().unwrap().clone()
}

#[test]
fn nodes_share_keys_and_rate_limits_and_say_who_wrote_what() {
    let spec = Spec {
        proxy: "rate_limit_per_key = 10\n".into(),
        // No static analysis: a sample's bytes are on the disk of the node
        // that took it, and a runner of the other one could not read them.
        // Webhooks (to a refused loopback address) need no bytes.
        ..one_worker("[intake]\nstatic_analysis_enabled = false\n[queue]\nrunners = 1\n")
    };
    let Some(c) = cluster("cl_share", 2, spec) else {
        return;
    };
    let (a, b) = (c.node(0), c.node(1));
    let (name_a, name_b) = (c.name(0), c.name(1));

    // A key made on A works on B; revoked on A, B refuses it within 5 s.
    let admin = a.new_key("admin");
    let reader = a.new_key("reader");
    assert_eq!(b.get_with_key("/v1/analyses?limit=1", &reader).status, 200);
    // The only reader key of this cluster's database.
    let name = c.scalar("SELECT name FROM api_keys WHERE role = 'reader'");
    let revoked = a.keys(&["revoke", &name]);
    assert!(revoked.status.success(), "{revoked:?}");
    let since = Instant::now();
    b.wait_until("the revoked key refused on B", 5 * SEC, |b| {
        b.get_with_key("/v1/analyses?limit=1", &reader).status == 401
    });
    eprintln!("revoked key refused on B after {:?}", since.elapsed());
    assert_eq!(a.get_with_key("/v1/analyses?limit=1", &reader).status, 401);

    // Rate limits: 8 + 8 requests with one key in one second, over a
    // limit of 10 only when the nodes count together.
    let key = format!("sgk_burst_{}", std::process::id());
    let mut refused = 0;
    for _ in 0..3 {
        at_the_next_second();
        let on_a = burst(a, &key, 8);
        let on_b = burst(b, &key, 8);
        assert!(
            on_a.iter().all(|&s| s == 200),
            "A alone is under the limit: {on_a:?}"
        );
        refused = on_b.iter().filter(|&&s| s == 429).count();
        if refused > 0 {
            break;
        }
        // The burst may have crossed a second: only then try again.
    }
    assert!(refused >= 6, "B saw A's requests: {refused} of 8 refused");
    let keys = c.redis.cli(&["--scan", "--pattern", "sandgnat:rl:key:*"]);
    assert!(!keys.trim().is_empty(), "no shared counter in Redis");
    for node in [a, b] {
        assert_eq!(
            node.metric("sandgnat_ratelimit_redis_fallbacks_total"),
            Some(0.0)
        );
    }

    // Every row says which node wrote it: the analysis, its audit rows,
    // and a runner's job, claimed under its node's name.
    let submitter = a.new_key("submitter");
    let bridge = a.new_key("bridge");
    let mut by_node = Vec::new();
    for (node, name) in [(a, &name_a), (b, &name_b)] {
        let body = format!("cluster sample from {name}");
        let sub = node.accepted(
            &submitter,
            "callback_url=http%3A%2F%2F127.0.0.1%3A9%2Fhook",
            body.as_bytes(),
            &[],
        );
        let id = sub["analysis_id"].as_str().unwrap().to_string();
        let seen = node
            .get_with_key(&format!("/v1/analyses/{id}"), &admin)
            .json();
        assert_eq!(seen["node"], json!(name), "{seen}");
        by_node.push((id, name.clone()));
    }
    // The bridge finishes both detonations, through either node; then each
    // analysis's webhook goes to a runner.
    for job in 0..2 {
        let via = if job == 0 { a } else { b };
        let r = via.post_json(
            &bridge,
            "/v1/queues/analysis/claim",
            json!({"max_jobs": 1, "lease_seconds": 60}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let claimed = r.json()["jobs"][0].clone();
        let done = via.post_json(
            &bridge,
            &format!("/v1/jobs/{}/complete", claimed["id"].as_str().unwrap()),
            json!({"lease_token": claimed["lease_token"], "result": {}}),
        );
        assert_eq!(done.status, 200, "{}", done.body);
    }
    for (id, name) in &by_node {
        // Seen from the other node too: one database.
        let other = if name == &name_a { b } else { a };
        let seen = other
            .get_with_key(&format!("/v1/analyses/{id}"), &admin)
            .json();
        assert_eq!(seen["node"], json!(name), "{seen}");
        let mut rows = Vec::new();
        let by_runner = |e: &Value| {
            e["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("runner:"))
                && e["details"]["kind"] == "webhook"
        };
        other.wait_until("a runner ran the webhook", 30 * SEC, |n| {
            rows = audit(n, &admin, id);
            rows.iter().any(by_runner)
        });
        for e in rows
            .iter()
            .filter(|e| e["event"] == "submitted" || e["event"] == "scanned")
        {
            assert_eq!(e["node"], json!(name), "{e}");
        }
        // The runner says its node in its name, and its rows carry it.
        let ran = rows.iter().find(|e| by_runner(e)).unwrap();
        let actor = ran["actor"].as_str().unwrap();
        let runner_node = actor.rsplit_once('@').map(|(_, n)| n).unwrap_or("");
        assert!(runner_node == name_a || runner_node == name_b, "{ran}");
        assert_eq!(ran["node"], json!(runner_node), "{ran}");
    }
    let nodes = c.scalar("SELECT string_agg(DISTINCT node, ',' ORDER BY node) FROM analyses");
    assert_eq!(nodes, format!("{name_a},{name_b}"));

    // Logs and metrics say the node too, for every role.
    for (node, name) in [(a, &name_a), (b, &name_b)] {
        let mut roles = BTreeSet::new();
        for line in node.log_text().lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            assert_eq!(v["node"], json!(name), "{line}");
            roles.insert(v["role"].as_str().unwrap_or("").to_string());
        }
        for role in ["master", "worker", "recorder", "runner", "frontend"] {
            assert!(roles.contains(role), "no {role} line on {name}: {roles:?}");
        }
        assert_eq!(
            node.metric(&format!("sandgnat_node_info{{node=\"{name}\"}}")),
            Some(1.0)
        );
    }
    // One of them runs the run-once work.
    c.leader(&[0, 1], 10 * SEC);
}

/// The node that runs the queue maintenance.
fn ran_by(c: &Cluster) -> String {
    c.scalar("SELECT node FROM cluster_duties WHERE duty = 'queue_maintenance'")
}

/// After A was killed at `killed_at` (database epoch seconds), B runs the
/// queue maintenance within one `interval` of A's death and leads.
fn b_takes_the_maintenance_over(c: &Cluster, name_b: &str, killed_at: &str, interval: u64) {
    c.node(1).wait_until(
        "B runs the maintenance",
        Duration::from_secs(interval + 10),
        |_| ran_by(c) == name_b,
    );
    let gap: f64 = c
        .scalar(&format!(
            "SELECT extract(epoch FROM at) - {killed_at} FROM cluster_duties
              WHERE duty = 'queue_maintenance'"
        ))
        .parse()
        .unwrap();
    eprintln!("maintenance ran on B {gap:.2} s after A was killed");
    assert!(gap <= interval as f64 + 1.5, "{gap:.2} s after A's death");
    assert_eq!(c.leader(&[1], 5 * SEC), 1);
}

/// With one node started: it leads (it is alone) and runs the queue
/// maintenance, then a second node joins and waits. Their names.
fn a_leads_then_b_joins(c: &mut Cluster) -> (String, String) {
    assert_eq!(c.leader(&[0], 10 * SEC), 0);
    c.add_node();
    let (name_a, name_b) = (c.name(0), c.name(1));
    c.node(0)
        .wait_until("A runs the maintenance", 10 * SEC, |_| ran_by(c) == name_a);
    (name_a, name_b)
}

fn submit_until_gone(node: &Appliance, key: &str) -> Vec<String> {
    let mut accepted = Vec::new();
    for i in 0u64.. {
        let body = format!("sample {i} of a node about to die {}", std::process::id());
        match common::request_unix_body(
            &node.socket,
            "POST",
            "/v1/submit",
            &[
                ("X-API-Key", key),
                ("Content-Type", "application/octet-stream"),
            ],
            Some(body.as_bytes()),
        ) {
            Ok(r) if r.status == 202 => {
                accepted.push(r.json()["analysis_id"].as_str().unwrap().to_string());
            }
            Ok(r) if r.status >= 500 => break,
            Ok(r) => panic!("{} {}", r.status, r.body),
            Err(_) => break,
        }
    }
    accepted
}

#[test]
fn the_run_once_work_moves_when_its_node_dies_or_freezes() {
    const INTERVAL: u64 = 2;
    let spec = one_worker(format!(
        "[queue]\nrunners = 0\nmaintenance_interval = {INTERVAL}\n"
    ));
    let Some(mut c) = cluster("cl_moves", 1, spec) else {
        return;
    };
    let (name_a, name_b) = a_leads_then_b_joins(&mut c);
    assert_eq!(c.node(1).metric("sandgnat_cluster_lead"), Some(0.0));

    // A dies mid-run, with submissions in flight.
    let submitter = c.node(0).new_key("submitter");
    let admin = c.node(0).new_key("admin");
    let accepted = std::thread::scope(|s| {
        let node = c.node(0);
        let writer = s.spawn(|| submit_until_gone(node, &submitter));
        let started = Instant::now();
        while c
            .scalar("SELECT count(*) FROM analyses")
            .parse::<u32>()
            .unwrap()
            < 20
        {
            assert!(started.elapsed() < 30 * SEC, "submissions too slow");
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill(2) on the node's process group (as `Cluster::kill`,
        // which needs the node mutably while it is borrowed here).
        unsafe { libc::kill(-node.pid(), libc::SIGKILL) };
        writer.join().unwrap()
    });
    let killed_at = c.scalar("SELECT extract(epoch FROM now())");
    c.kill(0);
    assert!(accepted.len() >= 20, "{}", accepted.len());

    // Every 202 A gave is whole in the database: analysis, sample, its
    // two audit rows and its job, all A's.
    let ids = accepted
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    let whole = c.scalar(&format!(
        "SELECT count(*) FROM analyses a JOIN samples s ON s.sha256 = a.sample_sha256
          WHERE a.id IN ({ids}) AND a.node = '{name_a}'
            AND (SELECT count(*) FROM analysis_audit_log l
                  WHERE l.analysis_id = a.id AND l.node = '{name_a}'
                    AND l.event IN ('submitted', 'scanned')) = 2
            AND EXISTS (SELECT 1 FROM jobs j WHERE j.analysis_id = a.id AND j.kind = 'detonate')"
    ));
    assert_eq!(whole, accepted.len().to_string());

    // B takes the work over within one interval of A's death.
    let b = c.node(1);
    b_takes_the_maintenance_over(&c, &name_b, &killed_at, INTERVAL);
    // And B carries on taking samples, seen with A's.
    b.accepted(&submitter, "", b"after A died", &[]);
    assert_eq!(
        b.get_with_key(&format!("/v1/analyses/{}", accepted[0]), &admin)
            .status,
        200
    );

    // B freezes: its socket to the database stays open and silent. The
    // server ends its session, and C takes the work over.
    c.add_node();
    let name_c = c.name(2);
    c.freeze(1);
    let frozen = Instant::now();
    c.node(2)
        .wait_until("C runs the maintenance", 20 * SEC, |_| ran_by(&c) == name_c);
    eprintln!(
        "maintenance moved off the frozen node after {:?}",
        frozen.elapsed()
    );
    c.thaw(1);
    // Thawed, B finds its lead gone and does not take it back.
    c.node(1)
        .wait_until("B knows it lost the lead", 10 * SEC, |b| {
            b.log_text().contains("lost the cluster's lead")
        });
    assert_eq!(c.leader(&[1, 2], 10 * SEC), 2);
}

fn delete(node: &Appliance, path: &str, key: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
    request_unix(&node.socket, "DELETE", path, &headers).unwrap()
}

/// What the bridge does with every detonation waiting: claim and complete.
fn detonate_all(node: &Appliance, bridge: &str) {
    let r = node.post_json(
        bridge,
        "/v1/queues/analysis/claim",
        json!({"max_jobs": 100, "lease_seconds": 60}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for job in r.json()["jobs"].as_array().unwrap() {
        let done = node.post_json(
            bridge,
            &format!("/v1/jobs/{}/complete", job["id"].as_str().unwrap()),
            json!({"lease_token": job["lease_token"], "result": {"verdict": "clean"}}),
        );
        assert_eq!(done.status, 200, "{}", done.body);
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn retention_deletes_old_bytes_and_keeps_the_record() {
    let spec = one_worker(
        "[intake]\nstatic_analysis_enabled = false\n\
         [queue]\nrunners = 0\nmaintenance_interval = 1\n\
         [retention]\nsample_days = 1\ninterval = 1\n",
    );
    let Some(c) = cluster("cl_retain", 2, spec) else {
        return;
    };
    // Each node keeps what it took on its own disk: work on the one that
    // runs retention.
    let l = c.leader(&[0, 1], 10 * SEC);
    let node = c.node(l);
    let name = c.name(l);
    let admin = node.new_key("admin");
    let bridge = node.new_key("bridge");
    let submitter = node.new_key("submitter");
    let reader = node.new_key("reader");
    let (one, two) = (
        b"kept, then purged on request".as_slice(),
        b"purged when old".as_slice(),
    );
    let (sha_one, sha_two) = (sha256_hex(one), sha256_hex(two));
    let first = node.accepted(&submitter, "", one, &[]);
    node.accepted(&submitter, "", two, &[]);
    let stored = |sha: &str| {
        node.dir
            .join("quarantine")
            .join(&sha[..2])
            .join(&sha[2..4])
            .join(sha)
            .exists()
    };
    assert!(stored(&sha_one) && stored(&sha_two));
    let content = |sha: &str| format!("/v1/samples/{sha}/content");

    // Only admin keys may purge; bad and unknown names are refused.
    for key in [&reader, &submitter, &bridge] {
        let r = delete(node, &content(&sha_one), Some(key));
        assert_eq!(r.status, 403, "{}", r.body);
        assert_eq!(r.json()["error"], "forbidden", "{}", r.body);
    }
    assert_eq!(delete(node, &content(&sha_one), None).status, 401);
    let r = delete(node, "/v1/samples/NOT-A-HASH/content", Some(&admin));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("invalid_sha256"))
    );
    let r = delete(node, &content(&"0".repeat(64)), Some(&admin));
    assert_eq!(r.status, 404, "{}", r.body);
    // A detonation still waits for the bytes.
    let r = delete(node, &content(&sha_one), Some(&admin));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (409, json!("sample_in_use")),
        "{}",
        r.body
    );
    assert!(stored(&sha_one));

    detonate_all(node, &bridge);
    let r = delete(node, &content(&sha_one), Some(&admin));
    assert_eq!(r.status, 200, "{}", r.body);
    let purged = r.json();
    assert_eq!(purged["content_purged"], true);
    assert_eq!(purged["purged_now"], true);
    assert!(!stored(&sha_one), "the bytes are gone");
    let again = delete(node, &content(&sha_one), Some(&admin)).json();
    assert_eq!(again["purged_now"], false);
    assert_eq!(again["purged_at"], purged["purged_at"]);

    // Downloads are gone; the record and its trail stay, on either node.
    for n in [c.node(0), c.node(1)] {
        let r = n.get_with_key(&content(&sha_one), &admin);
        assert_eq!(r.status, 410, "{}", r.body);
        assert_eq!(r.json()["error"], "content_purged");
        let lookup = n
            .get_with_key(&format!("/v1/samples/{sha_one}"), &admin)
            .json();
        assert_eq!(lookup["content_purged"], true, "{lookup}");
        assert_eq!(lookup["analyses"].as_array().unwrap().len(), 1);
    }
    let id = first["analysis_id"].as_str().unwrap();
    let trail = audit(node, &admin, id);
    let purge_row = trail
        .iter()
        .find(|e| e["event"] == "sample_content_purged")
        .unwrap_or_else(|| panic!("{trail:?}"));
    assert!(
        purge_row["actor"]
            .as_str()
            .unwrap()
            .starts_with("key:admin-"),
        "{purge_row}"
    );
    assert_eq!(purge_row["details"]["reason"], "request");
    assert_eq!(purge_row["node"], json!(name));
    assert!(trail.iter().any(|e| e["event"] == "submitted"));

    // The same bytes again: stored again, no longer purged.
    node.accepted(&submitter, "", one, &[]);
    assert!(stored(&sha_one));
    let lookup = node
        .get_with_key(&format!("/v1/samples/{sha_one}"), &admin)
        .json();
    assert_eq!(lookup["content_purged"], false, "{lookup}");
    let r = node.get_with_key(&content(&sha_one), &admin);
    assert_eq!((r.status, r.body.as_bytes()), (200, one));

    // Retention: the other sample, last seen three days ago, goes by
    // itself; the one just submitted again stays.
    detonate_all(node, &bridge);
    c.db.scalar(&format!(
        "UPDATE samples SET last_seen = now() - interval '3 days' WHERE sha256 = '{sha_two}'"
    ));
    // Marked first, then the bytes deleted after that commit: wait for both.
    node.wait_until("retention purges the old sample", 15 * SEC, |_| {
        c.scalar(&format!(
            "SELECT content_purged FROM samples WHERE sha256 = '{sha_two}'"
        )) == "t"
            && !stored(&sha_two)
    });
    assert!(stored(&sha_one));
    let by_retention = c.scalar(&format!(
        "SELECT actor || ' ' || (details->>'reason') || ' ' || node FROM analysis_audit_log
          WHERE event = 'sample_content_purged' AND details->>'sha256' = '{sha_two}'"
    ));
    assert_eq!(by_retention, format!("sandgnat retention {name}"));

    // The operator's command on the node: the same purge, as the operator.
    let purge = |sha: &str| {
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.args(["samples", "purge", sha, "--config"])
            .arg(node.dir.join("sandgnat.toml"));
        common::clean_env(&mut cmd);
        cmd.output().unwrap()
    };
    let out = purge(&sha_one);
    assert!(out.status.success(), "{out:?}");
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["purged_now"], true, "{said}");
    assert!(!stored(&sha_one));
    let actor = c.scalar(&format!(
        "SELECT actor FROM analysis_audit_log WHERE event = 'sample_content_purged'
          AND details->>'sha256' = '{sha_one}' ORDER BY id DESC LIMIT 1"
    ));
    assert!(actor.starts_with("cli:"), "{actor}");
    assert_eq!(purge(&"0".repeat(64)).status.code(), Some(1));
    assert_eq!(purge("not-a-hash").status.code(), Some(2));
}

// With the S3 store (`common::s3`, a Garage on loopback): one bucket for
// every node, so any node serves any sample.

const PREFIX: &str = "samples";

/// The settings every node of an S3 cluster shares: `garage`'s bucket,
/// then `more`.
fn s3_spec(garage: &Garage, more: &str) -> Spec {
    Spec {
        env: garage.env(),
        ..one_worker(format!("{}{more}", garage.storage_toml(PREFIX)))
    }
}

/// A GET on a node's workers' socket with the body kept as bytes.
fn get_bytes(node: &Appliance, path: &str, key: &str) -> (u16, Vec<u8>) {
    let mut s = UnixStream::connect(&node.socket).unwrap();
    s.set_read_timeout(Some(60 * SEC)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: sandgnat\r\nConnection: close\r\nX-API-Key: {key}\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

/// A webhook receiver on loopback that answers 200 to every request and
/// hands each body to the test.
fn receiver() -> (String, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(10 * SEC)).unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut length = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && !line.trim().is_empty() {
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap();
                    }
                }
                line.clear();
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
            let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
        }
    });
    (addr, rx)
}

#[test]
fn with_s3_a_sample_taken_by_one_node_is_claimed_downloaded_and_analysed_through_the_other() {
    let garage = Garage::start("cl-flow");
    // Both nodes run a job runner: the static analysis goes to whichever
    // claims it first.
    let spec = s3_spec(
        &garage,
        "[queue]\nrunners = 1\nwebhook_allow_private = true\n",
    );
    let Some(c) = cluster("cl_s3flow", 2, spec) else {
        return;
    };
    let (a, b) = (c.node(0), c.node(1));
    let (submitter, bridge, reader) = (
        a.new_key("submitter"),
        a.new_key("bridge"),
        a.new_key("reader"),
    );
    let (hook, deliveries) = receiver();
    let callback: String =
        form_urlencoded::byte_serialize(format!("http://{hook}/sandgnat").as_bytes()).collect();

    // Submitted through A: in the bucket, at its content address, at 202.
    let exe = std::fs::read("/bin/true").unwrap();
    let sub = a.accepted(
        &submitter,
        &format!("callback_url={callback}"),
        &exe,
        &[("X-Filename", "true")],
    );
    let id = sub["analysis_id"].as_str().unwrap().to_string();
    let sha = sub["sha256"].as_str().unwrap().to_string();
    assert!(garage.get(&common::s3::sample_key(PREFIX, &sha)).as_deref() == Some(&exe[..]));

    // Claimed through B by the bridge, and its sample downloaded through
    // B: the bytes A took.
    let r = b.post_json(
        &bridge,
        "/v1/queues/analysis/claim",
        json!({"max_jobs": 1, "lease_seconds": 60}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let job = r.json()["jobs"][0].clone();
    assert_eq!(job["analysis_id"], json!(id), "{job}");
    assert_eq!(job["payload"]["sha256"], json!(sha), "{job}");
    let url = job["payload"]["sample_url"].as_str().unwrap();
    let (status, body) = get_bytes(b, url, &bridge);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body == exe, "{} bytes downloaded through B", body.len());
    let reads = b.metric(r#"sandgnat_storage_operations_total{operation="get",outcome="ok"}"#);
    assert!(reads.unwrap_or(0.0) >= 1.0, "{reads:?}");
    let done = b.post_json(
        &bridge,
        &format!("/v1/jobs/{}/complete", job["id"].as_str().unwrap()),
        json!({"lease_token": job["lease_token"], "result": {"verdict": "clean"}}),
    );
    assert_eq!(done.status, 200, "{}", done.body);

    // The static analysis, by whichever node's runner claimed it, from
    // the bucket; its job says which.
    let mut seen = Value::Null;
    b.wait_until("the static result", 60 * SEC, |n| {
        seen = n
            .get_with_key(&format!("/v1/analyses/{id}"), &reader)
            .json();
        seen["results"]["static"].is_object()
    });
    assert_eq!(seen["results"]["static"]["size"], exe.len() as u64);
    assert_eq!(seen["results"]["static"]["file_type"], "elf");
    let holder = c.scalar(&format!(
        "SELECT lease_holder FROM jobs WHERE analysis_id = '{id}' AND kind = 'static'"
    ));
    let ran_on = holder
        .strip_prefix("runner:")
        .and_then(|h| h.split_once('@'))
        .map(|(_, node)| node.to_string())
        .unwrap_or_default();
    assert!(ran_on == c.name(0) || ran_on == c.name(1), "{holder}");
    eprintln!("the static analysis ran on {ran_on}");

    // The webhook fires once, when the analysis is complete.
    let first = deliveries.recv_timeout(30 * SEC).expect("the webhook");
    assert_eq!(first["analysis_id"], json!(id), "{first}");
    assert_eq!(first["status"], "completed", "{first}");
    assert_eq!(first["sha256"], json!(sha), "{first}");
    a.wait_until("the webhook job completed", 10 * SEC, |n| {
        let seen = n
            .get_with_key(&format!("/v1/analyses/{id}"), &reader)
            .json();
        seen["results"]["webhook"]["http_status"] == 200
    });
    assert_eq!(
        c.scalar(&format!(
            "SELECT count(*) || ' ' || min(state) || ' ' || min(attempt) FROM jobs
              WHERE analysis_id = '{id}' AND kind = 'webhook'"
        )),
        "1 completed 1"
    );
    // Both runners keep polling; no second delivery comes.
    assert!(
        deliveries.recv_timeout(3 * SEC).is_err(),
        "a second delivery"
    );
}

#[test]
fn with_s3_the_lead_purges_old_objects_from_the_bucket_and_the_trail_stays() {
    let garage = Garage::start("cl-retain");
    let spec = s3_spec(
        &garage,
        "[intake]\nstatic_analysis_enabled = false\n\
         [queue]\nrunners = 0\nmaintenance_interval = 1\n\
         [retention]\nsample_days = 1\ninterval = 1\n",
    );
    let Some(c) = cluster("cl_s3retain", 2, spec) else {
        return;
    };
    let l = c.leader(&[0, 1], 10 * SEC);
    let (lead, other) = (c.node(l), c.node(1 - l));
    let (admin, bridge, submitter) = (
        lead.new_key("admin"),
        lead.new_key("bridge"),
        lead.new_key("submitter"),
    );
    // The old sample is taken by the node that does not lead: the lead
    // deletes an object it never wrote. The new one stays.
    let (old, new) = (
        b"taken by the other node, old by now".as_slice(),
        b"taken by the lead, still new".as_slice(),
    );
    let sub = other.accepted(&submitter, "", old, &[]);
    let id = sub["analysis_id"].as_str().unwrap().to_string();
    lead.accepted(&submitter, "", new, &[]);
    let (sha_old, sha_new) = (sha256_hex(old), sha256_hex(new));
    let (key_old, key_new) = (
        common::s3::sample_key(PREFIX, &sha_old),
        common::s3::sample_key(PREFIX, &sha_new),
    );
    assert_eq!(garage.head(&key_old), Some(old.len() as u64));
    detonate_all(other, &bridge);
    c.db.scalar(&format!(
        "UPDATE samples SET last_seen = now() - interval '3 days' WHERE sha256 = '{sha_old}'"
    ));
    lead.wait_until("retention purges the old sample", 15 * SEC, |_| {
        c.scalar(&format!(
            "SELECT content_purged FROM samples WHERE sha256 = '{sha_old}'"
        )) == "t"
    });
    // Deleted from the bucket by the lead, as the lead's metrics say.
    lead.wait_until("the object deleted", 10 * SEC, |_| {
        garage.head(&key_old).is_none()
    });
    assert!(garage.get(&key_new).as_deref() == Some(new));
    let deletes = |n: &Appliance| {
        n.metric(r#"sandgnat_storage_operations_total{operation="delete",outcome="ok"}"#)
    };
    assert_eq!(deletes(lead), Some(1.0));
    assert_eq!(deletes(other), Some(0.0));

    // The trail stays: the purge's audit row, by retention on the lead,
    // the submission's own rows, the sample marked.
    let by_retention = c.scalar(&format!(
        "SELECT actor || ' ' || (details->>'reason') || ' ' || node FROM analysis_audit_log
          WHERE event = 'sample_content_purged' AND details->>'sha256' = '{sha_old}'"
    ));
    assert_eq!(by_retention, format!("sandgnat retention {}", c.name(l)));
    let trail = audit(other, &admin, &id);
    assert!(trail.iter().any(|e| e["event"] == "submitted"), "{trail:?}");
    assert!(
        trail.iter().any(|e| e["event"] == "sample_content_purged"),
        "{trail:?}"
    );
    // Either node answers 410 for the bytes, and still knows the sample.
    for n in [lead, other] {
        let r = n.get_with_key(&format!("/v1/samples/{sha_old}/content"), &admin);
        assert_eq!(r.status, 410, "{}", r.body);
        assert_eq!(r.json()["error"], "content_purged");
        let lookup = n
            .get_with_key(&format!("/v1/samples/{sha_old}"), &admin)
            .json();
        assert_eq!(lookup["content_purged"], true, "{lookup}");
        assert_eq!(lookup["analyses"].as_array().unwrap().len(), 1);
        let (status, body) = get_bytes(n, &format!("/v1/samples/{sha_new}/content"), &admin);
        assert!(status == 200 && body == new, "{status}");
    }
}

/// What one submission of the SIGKILL test got: its bytes, and the
/// analysis of a 202 (None for anything else: a refusal, or a
/// connection the node's death cut).
struct Sent {
    bytes: Vec<u8>,
    accepted: Option<String>,
}

/// Submits distinct samples (a few KiB each) to `node` until `stop`, or
/// until it stops answering; what each got.
fn submit_while(node: &Appliance, key: &str, tag: &str, stop: &AtomicBool) -> Vec<Sent> {
    let mut sent = Vec::new();
    for i in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let bytes = format!("{tag} {i} {}\n", std::process::id())
            .repeat(200)
            .into_bytes();
        let r = common::request_unix_body(
            &node.socket,
            "POST",
            "/v1/submit",
            &[
                ("X-API-Key", key),
                ("Content-Type", "application/octet-stream"),
            ],
            Some(&bytes),
        );
        let (accepted, gone) = match r {
            Ok(r) if r.status == 202 => (
                Some(r.json()["analysis_id"].as_str().unwrap().to_string()),
                false,
            ),
            Ok(r) if r.status >= 500 => (None, true),
            Ok(r) => panic!("{} {}", r.status, r.body),
            Err(_) => (None, true),
        };
        sent.push(Sent { bytes, accepted });
        if gone {
            break;
        }
    }
    sent
}

#[test]
fn with_s3_a_node_killed_mid_run_loses_nothing_it_acknowledged() {
    const INTERVAL: u64 = 2;
    let garage = Garage::start("cl-kill");
    let spec = s3_spec(
        &garage,
        &format!(
            "[intake]\nstatic_analysis_enabled = false\n\
             [queue]\nrunners = 0\nmaintenance_interval = {INTERVAL}\n"
        ),
    );
    let Some(mut c) = cluster("cl_s3kill", 1, spec) else {
        return;
    };
    let (name_a, name_b) = a_leads_then_b_joins(&mut c);
    let submitter = c.node(0).new_key("submitter");

    // Clients submit to A and to B; A dies under them.
    let stop_b = AtomicBool::new(false);
    let (on_a, on_b, killed_at) = std::thread::scope(|s| {
        let (a, b) = (c.node(0), c.node(1));
        let to_a = s.spawn(|| submit_while(a, &submitter, "to A", &AtomicBool::new(false)));
        let to_b = s.spawn(|| submit_while(b, &submitter, "to B", &stop_b));
        let count = |node: &str| {
            c.scalar(&format!(
                "SELECT count(*) FROM analyses WHERE node = '{node}'"
            ))
            .parse::<u32>()
            .unwrap()
        };
        let started = Instant::now();
        while count(&name_a) < 20 || count(&name_b) < 5 {
            assert!(started.elapsed() < 30 * SEC, "submissions too slow");
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill(2) on node A's process group (as `Cluster::kill`,
        // which needs the cluster mutably while it is borrowed here).
        unsafe { libc::kill(-a.pid(), libc::SIGKILL) };
        let killed_at = c.scalar("SELECT extract(epoch FROM now())");
        let on_a = to_a.join().unwrap();
        // B keeps taking samples after A's death.
        let before = count(&name_b);
        b.wait_until("B takes more samples", 10 * SEC, |_| {
            count(&name_b) >= before + 5
        });
        stop_b.store(true, Ordering::Relaxed);
        (on_a, to_b.join().unwrap(), killed_at)
    });
    c.kill(0);

    // Every 202 A gave: its object at its content address with its bytes,
    // and its analysis, job and audit rows, all A's.
    let accepted: Vec<(&String, &Vec<u8>)> = on_a
        .iter()
        .filter_map(|s| s.accepted.as_ref().map(|id| (id, &s.bytes)))
        .collect();
    assert!(accepted.len() >= 20, "{}", accepted.len());
    eprintln!(
        "A acknowledged {} of {} submissions; B {}",
        accepted.len(),
        on_a.len(),
        on_b.len()
    );
    for (id, bytes) in &accepted {
        let sha = sha256_hex(bytes);
        let stored = garage.get(&common::s3::sample_key(PREFIX, &sha));
        assert!(
            stored.as_deref() == Some(&bytes[..]),
            "{id}: {sha} not in the bucket"
        );
    }
    let ids = accepted
        .iter()
        .map(|(id, _)| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    let whole = c.scalar(&format!(
        "SELECT count(*) FROM analyses a JOIN samples s ON s.sha256 = a.sample_sha256
          WHERE a.id IN ({ids}) AND a.node = '{name_a}'
            AND s.storage_path LIKE 's3://%'
            AND (SELECT count(*) FROM analysis_audit_log l
                  WHERE l.analysis_id = a.id AND l.node = '{name_a}'
                    AND l.event IN ('submitted', 'scanned')) = 2
            AND EXISTS (SELECT 1 FROM jobs j WHERE j.analysis_id = a.id AND j.kind = 'detonate')"
    ));
    assert_eq!(whole, accepted.len().to_string());
    // Each of them once: the sha256 each 202 named is its bytes'.
    let shas = c.scalar(&format!(
        "SELECT count(DISTINCT sample_sha256) FROM analyses WHERE id IN ({ids})"
    ));
    assert_eq!(shas, accepted.len().to_string());

    // B never refused anything.
    assert!(on_b.len() >= 10, "{}", on_b.len());
    assert!(
        on_b.iter().all(|s| s.accepted.is_some()),
        "B refused {} of {}",
        on_b.iter().filter(|s| s.accepted.is_none()).count(),
        on_b.len()
    );

    // The run-once work moves to B within one interval of A's death.
    b_takes_the_maintenance_over(&c, &name_b, &killed_at, INTERVAL);
}

#[test]
fn with_s3_objects_no_sample_names_are_swept_by_the_lead_after_a_safety_age() {
    const AGE: u64 = 2;
    let garage = Garage::start("cl-orphans");
    let spec = s3_spec(
        &garage,
        &format!(
            "[intake]\nstatic_analysis_enabled = false\nleftover_age = {AGE}\n\
             leftover_sweep_interval = 1\n[queue]\nrunners = 0\n"
        ),
    );
    let Some(c) = cluster("cl_s3orphans", 2, spec) else {
        return;
    };
    let l = c.leader(&[0, 1], 10 * SEC);
    let (lead, other) = (c.node(l), c.node(1 - l));
    let submitter = other.new_key("submitter");
    let key = |bytes: &[u8]| common::s3::sample_key(PREFIX, &sha256_hex(bytes));
    let aside = |bytes: &[u8]| format!("{PREFIX}/leftovers/{}", sha256_hex(bytes));

    // Recorded: stays. Left by an upload whose commit failed: swept.
    // Written by someone, then found by a submission of the same bytes
    // before the safety age: recorded, stays. Not a sample's: stays.
    let kept = b"a recorded sample".as_slice();
    other.accepted(&submitter, "", kept, &[]);
    let orphan = b"uploaded, never committed".as_slice();
    garage.put(&key(orphan), orphan.to_vec());
    let found = b"uploaded, then found by a submission".as_slice();
    garage.put(&key(found), found.to_vec());
    other.accepted(&submitter, "", found, &[]);
    let note = format!("{PREFIX}/notes/readme.txt");
    garage.put(&note, b"not a sample".to_vec());
    // Set aside, then named by a sample (as a submission that found it
    // just before the move and committed just after would): copied back.
    let late = b"set aside, then named".as_slice();
    garage.put(&key(late), late.to_vec());

    let since = Instant::now();
    lead.wait_until("the orphan set aside", 20 * SEC, |_| {
        garage.head(&key(orphan)).is_none() && garage.head(&key(late)).is_none()
    });
    eprintln!("set aside after {:?}", since.elapsed());
    assert!(garage.head(&aside(late)).is_some(), "{:?}", garage.keys());
    c.db.scalar(&format!(
        "INSERT INTO samples (sha256, sha1, md5, size, file_type, storage_path)
         VALUES ('{}', repeat('1', 40), repeat('5', 32), {}, 'data', 's3://x') RETURNING 1",
        sha256_hex(late),
        late.len()
    ));
    lead.wait_until("the orphan removed, the named one back", 20 * SEC, |n| {
        garage.head(&aside(orphan)).is_none()
            && garage.head(&aside(late)).is_none()
            && garage.head(&key(late)).is_some()
            && n.metric(r#"sandgnat_leftovers_removed_total{kind="store"}"#) == Some(1.0)
    });
    eprintln!("swept after {:?}", since.elapsed());
    assert!(garage.get(&key(late)).as_deref() == Some(late));
    assert!(garage.get(&key(kept)).as_deref() == Some(kept));
    assert!(garage.get(&key(found)).as_deref() == Some(found));
    assert!(garage.head(&note).is_some());
    assert_eq!(garage.head(&key(orphan)), None);
    // Swept by the lead only, and no more than that: a few passes later,
    // nothing else has gone.
    assert_eq!(
        other.metric(r#"sandgnat_leftovers_removed_total{kind="store"}"#),
        Some(0.0)
    );
    assert_eq!(
        c.scalar("SELECT node FROM cluster_duties WHERE duty = 'store_leftovers'"),
        c.name(l)
    );
    std::thread::sleep(Duration::from_secs(AGE + 1));
    let left: Vec<String> = garage
        .keys()
        .into_iter()
        .filter(|k| !k.ends_with("readyz-probe"))
        .collect();
    let mut want = vec![key(kept), key(found), key(late), note];
    want.sort();
    assert_eq!(left, want);
    assert_eq!(
        lead.metric(r#"sandgnat_leftovers_removed_total{kind="store"}"#),
        Some(1.0)
    );
}
