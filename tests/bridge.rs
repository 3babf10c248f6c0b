//! The analysis bridge's flow end to end, through the real binary and a
//! database of its own: submit → claim → download the sample → heartbeat
//! → complete, and what readers then see; fencing and cancellation over
//! HTTP.

mod common;

use std::time::{Duration, Instant};

use common::db::TestDb;
use common::{request_unix_body, Appliance};
use serde_json::{json, Value};

const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

fn start(tag: &str, db: &TestDb, extra: &str) -> Appliance {
    Appliance::start(
        tag,
        "workers = 2\n",
        &format!(
            "[database]\nurl = \"{}\"\n[intake]\nstatic_analysis_enabled = false\n{extra}",
            db.url()
        ),
    )
}

fn claim(app: &Appliance, key: &str, body: Value) -> Vec<Value> {
    let r = app.post_json(key, "/v1/queues/analysis/claim", body);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["jobs"].as_array().unwrap().clone()
}

#[test]
fn the_bridge_flow_from_submit_to_result() {
    let db = TestDb::create("bridge_flow");
    let app = start("bridge-flow", &db, "");
    let submitter = app.new_key("submitter");
    let bridge = app.new_key("bridge");
    let reader = app.new_key("reader");

    let sub = app.submit(&submitter, EICAR, &[("X-Filename", "eicar.com")]);
    assert_eq!(sub.status, 202, "{}", sub.body);
    let accepted = sub.json();
    let analysis = accepted["analysis_id"].as_str().unwrap().to_string();
    let sha256 = accepted["sha256"].as_str().unwrap().to_string();
    // The job committed with the submission.
    let seen = app.get_with_key(&format!("/v1/analyses/{analysis}"), &reader);
    let seen = seen.json();
    assert_eq!(seen["status"], "queued");
    assert_eq!(seen["jobs"][0]["kind"], "detonate");
    assert_eq!(seen["jobs"][0]["state"], "available");

    let jobs = claim(&app, &bridge, json!({"max_jobs": 5, "lease_seconds": 60}));
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job["kind"], "detonate");
    assert_eq!(job["analysis_id"], analysis.as_str());
    assert_eq!(job["payload"]["sha256"], sha256.as_str());
    let id = job["id"].as_str().unwrap().to_string();
    let token = job["lease_token"].as_str().unwrap().to_string();
    let wrong = "0".repeat(32);

    // The sample, as stored.
    let content = app.get_with_key(job["payload"]["sample_url"].as_str().unwrap(), &bridge);
    assert_eq!(content.status, 200);
    assert_eq!(content.body.as_bytes(), EICAR);
    assert_eq!(content.header("x-content-type-options"), Some("nosniff"));
    // A reader may download what it may read (tests/download.rs has the
    // rest of the rule).
    let read = app.get_with_key(&format!("/v1/samples/{sha256}/content"), &reader);
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body.as_bytes(), EICAR);

    let running = app
        .get_with_key(&format!("/v1/analyses/{analysis}"), &reader)
        .json();
    assert_eq!(running["status"], "running");

    let hb = app.post_json(
        &bridge,
        &format!("/v1/jobs/{id}/heartbeat"),
        json!({"lease_token": token, "lease_seconds": 600}),
    );
    assert_eq!(hb.status, 200, "{}", hb.body);
    let pr = app.post_json(
        &bridge,
        &format!("/v1/jobs/{id}/progress"),
        json!({"lease_token": token, "progress": {"stage": "detonating", "vm": "win10-3"}}),
    );
    assert_eq!(pr.status, 200, "{}", pr.body);
    let seen = app
        .get_with_key(&format!("/v1/analyses/{analysis}"), &reader)
        .json();
    assert_eq!(seen["jobs"][0]["progress"]["stage"], "detonating");

    // A stale token changes nothing.
    let stale = app.post_json(
        &bridge,
        &format!("/v1/jobs/{id}/complete"),
        json!({"lease_token": wrong, "result": {"verdict": "clean"}}),
    );
    assert_eq!(stale.status, 409, "{}", stale.body);
    assert_eq!(stale.json()["error"], "lease_lost");
    let stale_fail = app.post_json(
        &bridge,
        &format!("/v1/jobs/{id}/fail"),
        json!({"lease_token": wrong, "error": "x"}),
    );
    assert_eq!(stale_fail.status, 409, "{}", stale_fail.body);

    let done = app.post_json(
        &bridge,
        &format!("/v1/jobs/{id}/complete"),
        json!({"lease_token": token, "result": {"verdict": "malicious", "score": 10}}),
    );
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json()["analysis_status"], "completed");
    let again = app.post_json(
        &bridge,
        &format!("/v1/jobs/{id}/complete"),
        json!({"lease_token": token, "result": {}}),
    );
    assert_eq!(again.status, 409);

    let seen = app
        .get_with_key(&format!("/v1/analyses/{analysis}"), &reader)
        .json();
    assert_eq!(seen["status"], "completed");
    assert_eq!(seen["results"]["detonate"]["verdict"], "malicious");
    let job_view = app.get_with_key(&format!("/v1/jobs/{id}"), &bridge).json();
    assert_eq!(job_view["state"], "completed");
    assert_eq!(job_view["result"]["score"], 10);

    let admin = app.new_key("admin");
    let audit = app
        .get_with_key(&format!("/v1/audit?analysis_id={analysis}"), &admin)
        .json();
    let events: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "submitted",
            "scanned",
            "status_changed",
            // The bridge's download, then the reader's.
            "sample_downloaded",
            "sample_downloaded",
            "job_completed",
            "status_changed"
        ]
    );
    let changes: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "status_changed")
        .map(|e| {
            (
                e["details"]["from"].as_str().unwrap().to_string(),
                e["details"]["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("queued".to_string(), "running".to_string()),
            ("running".to_string(), "completed".to_string())
        ]
    );
}

#[test]
fn a_long_poll_claim_wakes_on_submit_and_bad_claims_are_4xx() {
    let db = TestDb::create("bridge_poll");
    let app = start("bridge-poll", &db, "");
    let submitter = app.new_key("submitter");
    let bridge = app.new_key("bridge");

    for (body, want) in [
        (json!({"max_jobs": 0}), "max_jobs"),
        (json!({"lease_seconds": 0}), "lease_seconds"),
        (json!({"wait_seconds": 100000}), "wait_seconds"),
        (json!({"bogus": 1}), "bogus"),
    ] {
        let r = app.post_json(&bridge, "/v1/queues/analysis/claim", body);
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains(want), "{}", r.body);
    }
    let r = app.post_json(&bridge, "/v1/queues/nope/claim", json!({}));
    assert_eq!(r.status, 404, "{}", r.body);
    let r = app.post_json(&submitter, "/v1/queues/analysis/claim", json!({}));
    assert_eq!(r.status, 403, "{}", r.body);

    // An empty wait answers at once with no jobs.
    assert!(claim(&app, &bridge, json!({})).is_empty());

    let socket = app.socket.clone();
    let bridge2 = bridge.clone();
    let waiter = std::thread::spawn(move || {
        let start = Instant::now();
        let body = json!({"wait_seconds": 20}).to_string();
        let r = request_unix_body(
            &socket,
            "POST",
            "/v1/queues/analysis/claim",
            &[("X-API-Key", &bridge2)],
            Some(body.as_bytes()),
        )
        .unwrap();
        (start, Instant::now(), r)
    });
    // The claim is in flight in a worker (waiting: there is no job yet).
    app.wait_until("the claim to wait", Duration::from_secs(10), |a| {
        a.metric_sum("sandgnat_worker_pending_requests", "") >= 1.0
    });
    let sub = app.submit(&submitter, b"sample for the long poll", &[]);
    assert_eq!(sub.status, 202, "{}", sub.body);
    let submitted = Instant::now();
    let (_, answered, r) = waiter.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["jobs"].as_array().unwrap().len(), 1);
    assert!(
        answered.duration_since(submitted) < Duration::from_millis(900),
        "woken {:?} after the submit",
        answered.duration_since(submitted)
    );
}

#[test]
fn cancel_is_admin_only_and_fences_the_holder() {
    let db = TestDb::create("bridge_cancel");
    let app = start("bridge-cancel", &db, "");
    let submitter = app.new_key("submitter");
    let bridge = app.new_key("bridge");
    let admin = app.new_key("admin");
    let sub = app.submit(&submitter, b"to be cancelled", &[]).json();
    let analysis = sub["analysis_id"].as_str().unwrap();
    let job = claim(&app, &bridge, json!({}))[0].clone();
    let id = job["id"].as_str().unwrap();
    let path = format!("/v1/jobs/{id}/cancel");
    assert_eq!(app.post_json(&bridge, &path, json!({})).status, 403);
    let r = app.post_json(&admin, &path, json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["previous"], "running");
    assert_eq!(r.json()["analysis_status"], "failed");
    let hb = app.post_json(
        &bridge,
        &format!("/v1/jobs/{id}/heartbeat"),
        json!({"lease_token": job["lease_token"]}),
    );
    assert_eq!(hb.status, 409, "{}", hb.body);
    assert_eq!(app.post_json(&admin, &path, json!({})).status, 409);
    let seen = app
        .get_with_key(&format!("/v1/analyses/{analysis}"), &admin)
        .json();
    assert_eq!(seen["status"], "failed");
    let bad = app.post_json(&admin, "/v1/jobs/not-a-uuid/cancel", json!({}));
    assert_eq!(bad.status, 400);
}

#[test]
fn another_bridge_key_cannot_hold_a_job_by_its_id_and_a_reclaim_fences_the_old_token() {
    let db = TestDb::create("bridge_tokens");
    let app = start("bridge-tokens", &db, "");
    let submitter = app.new_key("submitter");
    let holder = app.new_key("bridge");
    let intruder = app.new_key("bridge");
    let sub = app.submit(&submitter, b"a job to hijack", &[]).json();
    let analysis = sub["analysis_id"].as_str().unwrap().to_string();
    let job = claim(&app, &holder, json!({"lease_seconds": 2}))[0].clone();
    let id = job["id"].as_str().unwrap().to_string();
    let token = job["lease_token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 32, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");

    // The intruder reads the job (bridge keys may) and guesses what the
    // token used to be: the attempt number, as a number and as text.
    let seen = app
        .get_with_key(&format!("/v1/jobs/{id}"), &intruder)
        .json();
    assert!(seen.get("lease_token").is_none(), "{seen}");
    let attempt = seen["attempt"].clone();
    for guess in [attempt.clone(), json!(attempt.to_string()), json!("")] {
        for (call, body) in [
            (
                "heartbeat",
                json!({"lease_token": guess, "lease_seconds": 600}),
            ),
            (
                "complete",
                json!({"lease_token": guess, "result": {"verdict": "clean"}}),
            ),
            (
                "fail",
                json!({"lease_token": guess, "error": "x", "retry": false}),
            ),
        ] {
            let r = app.post_json(&intruder, &format!("/v1/jobs/{id}/{call}"), body);
            // A number is no longer a token at all; a string is checked.
            let want = if guess.is_number() { 400 } else { 409 };
            assert_eq!(r.status, want, "{call} with {guess}: {}", r.body);
        }
    }
    let still = app.get_with_key(&format!("/v1/jobs/{id}"), &holder).json();
    assert_eq!(still["state"], "running", "{still}");
    assert!(still["result"].is_null(), "{still}");

    // The lease runs out and the job is claimed again: the new holder's
    // token is a different one and the old one holds nothing.
    let mut again = Vec::new();
    app.wait_until(
        "the expired job to be claimed again",
        Duration::from_secs(20),
        |a| {
            again = claim(a, &intruder, json!({"lease_seconds": 60}));
            !again.is_empty()
        },
    );
    assert_eq!(again[0]["id"], id.as_str());
    let second = again[0]["lease_token"].as_str().unwrap().to_string();
    assert_ne!(second, token);
    for (call, body) in [
        ("heartbeat", json!({"lease_token": token})),
        ("complete", json!({"lease_token": token, "result": {}})),
        ("fail", json!({"lease_token": token, "error": "x"})),
    ] {
        let r = app.post_json(&holder, &format!("/v1/jobs/{id}/{call}"), body);
        assert_eq!(r.status, 409, "{call}: {}", r.body);
        assert_eq!(r.json()["error"], "lease_lost");
    }
    let done = app.post_json(
        &intruder,
        &format!("/v1/jobs/{id}/complete"),
        json!({"lease_token": second, "result": {"verdict": "clean"}}),
    );
    assert_eq!(done.status, 200, "{}", done.body);
    let admin = app.new_key("admin");
    let seen = app
        .get_with_key(&format!("/v1/analyses/{analysis}"), &admin)
        .json();
    assert_eq!(seen["results"]["detonate"]["verdict"], "clean");
}

#[test]
fn internal_queues_cannot_be_claimed_or_held_over_http() {
    let db = TestDb::create("bridge_internal");
    // No runners: the static job waits, as it would while they are busy.
    let app = Appliance::start(
        "bridge-internal",
        "workers = 1\n",
        &format!("[database]\nurl = \"{}\"\n[queue]\nrunners = 0\n", db.url()),
    );
    let submitter = app.new_key("submitter");
    let bridge = app.new_key("bridge");
    let admin = app.new_key("admin");
    let sub = app
        .submit(&submitter, b"a sample with a static job", &[])
        .json();
    let analysis = sub["analysis_id"].as_str().unwrap();

    for key in [&bridge, &admin] {
        for queue in ["static", "notify"] {
            let r = app.post_json(key, &format!("/v1/queues/{queue}/claim"), json!({}));
            assert_eq!(r.status, 403, "{queue}: {}", r.body);
            assert_eq!(r.json()["error"], "internal_queue");
            assert!(
                r.json()["message"].as_str().unwrap().contains(queue),
                "{}",
                r.body
            );
        }
    }
    let seen = app
        .get_with_key(&format!("/v1/analyses/{analysis}"), &admin)
        .json();
    let job = seen["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["queue"] == "static")
        .unwrap_or_else(|| panic!("no static job: {seen}"))
        .clone();
    assert_eq!(job["state"], "available", "{job}");
    let id = job["id"].as_str().unwrap();
    let token = "0".repeat(32);
    for (call, body) in [
        ("heartbeat", json!({"lease_token": token})),
        ("progress", json!({"lease_token": token, "progress": {}})),
        ("complete", json!({"lease_token": token, "result": {}})),
        ("fail", json!({"lease_token": token, "error": "x"})),
    ] {
        let r = app.post_json(&bridge, &format!("/v1/jobs/{id}/{call}"), body);
        assert_eq!(r.status, 403, "{call}: {}", r.body);
        assert_eq!(r.json()["error"], "internal_queue");
    }
    // The external queue is still the bridge's.
    let jobs = claim(&app, &bridge, json!({}));
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["queue"], "analysis");
}

#[test]
fn analyses_and_jobs_are_read_only_by_those_allowed_to_see_them() {
    let db = TestDb::create("bridge_visibility");
    let app = start("bridge-visibility", &db, "");
    let a = app.new_key("submitter");
    let b = app.new_key("submitter");
    let reader = app.new_key("reader");
    let bridge = app.new_key("bridge");
    let admin = app.new_key("admin");

    let amber = app.submit(&a, b"an amber sample", &[]).json();
    let amber = amber["analysis_id"].as_str().unwrap().to_string();
    let red = request_unix_body(
        &app.socket,
        "POST",
        "/v1/submit?tlp=red",
        &[
            ("X-API-Key", &a),
            ("Content-Type", "application/octet-stream"),
        ],
        Some(b"a red sample"),
    )
    .unwrap();
    assert_eq!(red.status, 202, "{}", red.body);
    let red = red.json()["analysis_id"].as_str().unwrap().to_string();

    let status = |path: &str, key: &str| app.get_with_key(path, key).status;
    let amber_path = format!("/v1/analyses/{amber}");
    let red_path = format!("/v1/analyses/{red}");
    // Missing and not visible look the same.
    let missing = app.get_with_key(&format!("/v1/analyses/{}", uuid::Uuid::new_v4()), &b);
    assert_eq!(missing.status, 404);
    let hidden = app.get_with_key(&amber_path, &b);
    assert_eq!(hidden.status, 404, "{}", hidden.body);
    assert_eq!(hidden.json()["error"], missing.json()["error"]);
    assert_eq!(status(&amber_path, &a), 200);
    assert_eq!(status(&amber_path, &reader), 200);
    assert_eq!(status(&red_path, &reader), 404);
    assert_eq!(status(&red_path, &bridge), 404);
    assert_eq!(status(&red_path, &b), 404);
    let seen = app.get_with_key(&red_path, &a);
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert_eq!(seen.json()["tlp"], "red");
    assert_eq!(status(&red_path, &admin), 200);

    // The red analysis's job: the admin sees it, a bridge key does not.
    let jobs = app.get_with_key(&red_path, &admin).json()["jobs"].clone();
    let red_job = jobs[0]["id"].as_str().unwrap().to_string();
    let jobs = app.get_with_key(&amber_path, &admin).json()["jobs"].clone();
    let amber_job = jobs[0]["id"].as_str().unwrap().to_string();
    assert_eq!(status(&format!("/v1/jobs/{red_job}"), &bridge), 404);
    assert_eq!(status(&format!("/v1/jobs/{red_job}"), &admin), 200);
    assert_eq!(status(&format!("/v1/jobs/{amber_job}"), &bridge), 200);
}
