//! The read side end to end, through the real binary and a database of its
//! own: lookups by each hash, filtered lists paged with cursors while new
//! analyses arrive, the change feed read with curl (a real HTTP client that
//! checks chunked framing) including a change whose transaction commits
//! after later ones, and who sees what.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::db::TestDb;
use common::Appliance;
use serde_json::Value;

const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

fn start(tag: &str, db: &TestDb) -> Appliance {
    Appliance::start(
        tag,
        "workers = 2\n",
        &format!(
            "[database]\nurl = \"{}\"\n[intake]\nstatic_analysis_enabled = false\n",
            db.url()
        ),
    )
}

/// Submits `body` with query-string metadata; returns the 202's JSON.
fn submit(app: &Appliance, key: &str, body: &[u8], query: &str) -> Value {
    app.accepted(key, query, body, &[])
}

fn get(app: &Appliance, key: &str, path: &str) -> (u16, Value) {
    let r = app.get_with_key(path, key);
    let body = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r.status, body)
}

/// The feed through curl; `None` when the response was cut short.
fn feed(app: &Appliance, key: &str, cursor: Option<&str>) -> (Vec<Value>, String) {
    let path = match cursor {
        Some(c) => format!("/v1/export/analyses?cursor={c}"),
        None => "/v1/export/analyses".to_string(),
    };
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--unix-socket"])
        .arg(&app.socket)
        .args(["-H", &format!("X-API-Key: {key}")])
        .arg(format!("http://sandgnat{path}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let mut lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.pop().expect("a closing line");
    assert_eq!(last["end"], true, "{last}");
    assert_eq!(last["count"].as_u64(), Some(lines.len() as u64));
    (lines, last["cursor"].as_str().unwrap().to_string())
}

/// The feed from `cursor`, read again until `done` holds of its lines (at
/// most 30 s).
fn feed_until(
    app: &Appliance,
    key: &str,
    cursor: Option<&str>,
    done: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (lines, next) = feed(app, key, cursor);
        if done(&lines) || Instant::now() > deadline {
            return (lines, next);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn lookups_lists_and_who_sees_what() {
    let db = TestDb::create("export_reads");
    let app = start("export-reads", &db);
    let alice = app.new_key("submitter");
    let bob = app.new_key("submitter");
    let reader = app.new_key("reader");
    let admin = app.new_key("admin");

    let first = submit(
        &app,
        &alice,
        EICAR,
        "filename=first.com&tags=apt,x&tlp=green",
    );
    let again = submit(&app, &alice, EICAR, "filename=second.com&tlp=amber");
    let red = submit(&app, &bob, b"bob's red sample", "tlp=red&tags=apt");
    let sha256 = first["sha256"].as_str().unwrap();

    // Every hash finds the sample, in any case; newest analysis first.
    let (status, by256) = get(
        &app,
        &reader,
        &format!("/v1/samples/{}", sha256.to_uppercase()),
    );
    assert_eq!(status, 200, "{by256}");
    assert_eq!(by256["sha256"], sha256);
    assert_eq!(by256["analyses"][0]["analysis_id"], again["analysis_id"]);
    assert_eq!(by256["analyses"][1]["analysis_id"], first["analysis_id"]);
    assert_eq!(
        by256["file_names"],
        serde_json::json!(["first.com", "second.com"])
    );
    assert_eq!(by256["analyses"][0]["yara"][0]["rule"], "EICAR_Test_File");
    for hash in ["sha1", "md5"] {
        let h = by256[hash].as_str().unwrap();
        let (status, body) = get(&app, &reader, &format!("/v1/samples/{h}"));
        assert_eq!(status, 200, "{hash}: {body}");
        assert_eq!(body["sha256"], sha256);
    }
    for bad in ["abc", &"g".repeat(64), &"a".repeat(63)] {
        let (status, body) = get(&app, &reader, &format!("/v1/samples/{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_hash");
    }
    let (status, _) = get(&app, &reader, &format!("/v1/samples/{}", "0".repeat(64)));
    assert_eq!(status, 404);

    // TLP:RED: Bob and admins, nobody else; Bob never sees Alice's.
    let red_sha = red["sha256"].as_str().unwrap();
    assert_eq!(get(&app, &reader, &format!("/v1/samples/{red_sha}")).0, 404);
    assert_eq!(get(&app, &alice, &format!("/v1/samples/{red_sha}")).0, 404);
    assert_eq!(get(&app, &bob, &format!("/v1/samples/{red_sha}")).0, 200);
    assert_eq!(get(&app, &admin, &format!("/v1/samples/{red_sha}")).0, 200);
    assert_eq!(get(&app, &bob, &format!("/v1/samples/{sha256}")).0, 404);

    let ids = |body: &Value| -> Vec<String> {
        body["analyses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["analysis_id"].as_str().unwrap().to_string())
            .collect()
    };
    let id = |v: &Value| v["analysis_id"].as_str().unwrap().to_string();
    let (_, all) = get(&app, &admin, "/v1/analyses");
    assert_eq!(ids(&all), [id(&red), id(&again), id(&first)]);
    assert_eq!(
        ids(&get(&app, &reader, "/v1/analyses").1),
        [id(&again), id(&first)]
    );
    assert_eq!(ids(&get(&app, &bob, "/v1/analyses").1), [id(&red)]);
    assert_eq!(
        ids(&get(&app, &admin, "/v1/analyses?tag=apt").1),
        [id(&red), id(&first)]
    );
    assert_eq!(
        ids(&get(&app, &admin, "/v1/analyses?tlp=green").1),
        [id(&first)]
    );
    assert_eq!(
        ids(&get(&app, &admin, "/v1/analyses?rule=EICAR_Test_File").1),
        [id(&again), id(&first)]
    );
    assert_eq!(
        ids(&get(
            &app,
            &admin,
            &format!("/v1/analyses?md5={}", by256["md5"].as_str().unwrap())
        )
        .1),
        [id(&again), id(&first)]
    );
    assert_eq!(
        ids(&get(&app, &admin, "/v1/analyses?status=queued&limit=1").1),
        [id(&red)]
    );
    assert!(ids(&get(
        &app,
        &admin,
        "/v1/analyses?submitted_before=2000-01-01T00:00:00Z"
    )
    .1)
    .is_empty());
    for (query, code) in [
        ("stauts=queued", "unknown_parameter"),
        ("status=done", "invalid_filter"),
        ("limit=1001", "invalid_limit"),
        ("limit=x", "invalid_limit"),
        ("cursor=zz", "invalid_cursor"),
        ("submitted_after=yesterday", "invalid_time"),
        ("sha1=abc", "invalid_hash"),
    ] {
        let (status, body) = get(&app, &admin, &format!("/v1/analyses?{query}"));
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(code)),
            "{query}: {body}"
        );
    }

    // Pages of one, with a new analysis arriving between pages: the
    // pages still hold each older analysis once, in order.
    let mut seen = Vec::new();
    let mut next = Some("/v1/analyses?limit=1".to_string());
    let mut arrived = false;
    while let Some(path) = next {
        let (status, page) = get(&app, &admin, &path);
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        if !arrived {
            submit(&app, &alice, b"arrives while paging", "");
            arrived = true;
        }
        next = page["next"].as_str().map(str::to_string);
    }
    assert_eq!(seen, [id(&red), id(&again), id(&first)]);
}

#[test]
fn the_feed_sees_every_change_once_committed_in_any_order() {
    let db = TestDb::create("export_feed");
    let app = start("export-feed", &db);
    let alice = app.new_key("submitter");
    let reader = app.new_key("reader");
    let bridge = app.new_key("bridge");

    let early = submit(&app, &alice, b"early sample", "tlp=green");
    let early_id = early["analysis_id"].as_str().unwrap().to_string();
    // Transaction ids are server-wide: another database's open transaction
    // (other tests run beside this one) holds the feed back a moment, as
    // it would any consumer's. Poll as a consumer does.
    let (lines, cursor) = feed_until(&app, &reader, None, |lines| !lines.is_empty());
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["analysis_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [early_id.as_str()]);
    assert_eq!(lines[0]["sha256"], early["sha256"]);

    // A transaction that changes the early analysis first and commits
    // last, held open in psql while later submissions commit.
    let mut psql = Command::new("psql")
        .args([db.url().as_str(), "-v", "ON_ERROR_STOP=1", "-qtA"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_psql = psql.stdin.take().unwrap();
    let mut from_psql = BufReader::new(psql.stdout.take().unwrap());
    writeln!(
        to_psql,
        "BEGIN; UPDATE analyses SET tags = tags || '{{late}}'::text[] WHERE id = '{early_id}'; SELECT 'updated';"
    )
    .unwrap();
    let mut line = String::new();
    from_psql.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "updated");

    let later: Vec<String> = (0..3)
        .map(|i| {
            submit(&app, &alice, format!("later {i}").as_bytes(), "")["analysis_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    // Poll as a consumer would while the long transaction is open, then
    // after it commits: every later submission and the late change arrive.
    let mut cursor = cursor;
    let mut versions: HashMap<String, Vec<Value>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut committed = false;
    loop {
        let (lines, next) = feed(&app, &reader, Some(&cursor));
        for l in lines {
            versions
                .entry(l["analysis_id"].as_str().unwrap().to_string())
                .or_default()
                .push(l);
        }
        cursor = next;
        let late_seen = versions
            .get(&early_id)
            .is_some_and(|v| v.iter().any(|l| l["tags"] == serde_json::json!(["late"])));
        if late_seen && later.iter().all(|id| versions.contains_key(id)) {
            break;
        }
        if !committed {
            // One read while the transaction is open, then commit it.
            writeln!(to_psql, "COMMIT;").unwrap();
            committed = true;
        }
        assert!(
            Instant::now() < deadline,
            "feed never caught up: {versions:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(to_psql);
    assert!(psql.wait().unwrap().success());

    // A status change is a change: the bridge claims the job and the
    // analysis comes through again, now running.
    let r = app.post_json(
        &bridge,
        "/v1/queues/analysis/claim",
        serde_json::json!({"max_jobs": 10}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut running = HashSet::new();
    while running.len() < 4 {
        let (lines, next) = feed(&app, &reader, Some(&cursor));
        running.extend(
            lines
                .iter()
                .filter(|l| l["status"] == "running")
                .map(|l| l["analysis_id"].as_str().unwrap().to_string()),
        );
        cursor = next;
        assert!(
            Instant::now() < deadline,
            "status changes never seen: {running:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The operator's `sandgnat export` reads the same feed from the
    // database: everything from the start, nothing after the API's cursor.
    let export = |args: &[&str]| -> Vec<Value> {
        let mut cmd = Command::new(common::BIN);
        cmd.arg("export")
            .arg("--config")
            .arg(app.dir.join("sandgnat.toml"))
            .args(args);
        common::clean_env(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // Everything committed is below the horizon unless another database
    // holds it back: read again until it is all there (or time is up).
    let deadline = Instant::now() + Duration::from_secs(30);
    let everything = loop {
        let all = export(&[]);
        if all.last().and_then(|c| c["count"].as_u64()) == Some(4) || Instant::now() > deadline {
            break all;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (closing, lines) = everything.split_last().unwrap();
    assert_eq!(closing["count"].as_u64(), Some(4));
    let exported: HashSet<&str> = lines
        .iter()
        .map(|l| l["analysis_id"].as_str().unwrap())
        .collect();
    assert!(exported.contains(early_id.as_str()));
    assert!(later.iter().all(|id| exported.contains(id.as_str())));
    let (api_lines, _) = feed_until(&app, &reader, None, |l| l.len() >= 4);
    assert_eq!(api_lines.len(), 4);
    let nothing_new = export(&["--since", &cursor]);
    assert_eq!(nothing_new.len(), 1, "{nothing_new:?}");
    assert_eq!(nothing_new[0]["cursor"], cursor.as_str());
    let mut cmd = Command::new(common::BIN);
    cmd.args(["export", "--since", "not-a-cursor", "--config"])
        .arg(app.dir.join("sandgnat.toml"));
    common::clean_env(&mut cmd);
    assert_eq!(cmd.output().unwrap().status.code(), Some(2));

    // A bad cursor is a 400 with a JSON body, not an empty feed.
    let (status, body) = get(&app, &reader, "/v1/export/analyses?cursor=00ff");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_cursor"))
    );
}

/// Every role against every read route: what each key may see is the same
/// whichever route it asks through (lookup, list, feed, STIX, TAXII, zip
/// download), and a key sees nothing without being one.
#[test]
fn every_role_against_every_read_route() {
    let db = TestDb::create("export_roles");
    let app = start("export-roles", &db);
    let s1 = app.new_key("submitter");
    let s2 = app.new_key("submitter");
    let reader = app.new_key("reader");
    let bridge = app.new_key("bridge");
    let admin = app.new_key("admin");
    let a = submit(
        &app,
        &s1,
        b"amber sample of the first submitter",
        "tlp=amber",
    );
    let red = submit(&app, &s2, b"red sample of the second submitter", "tlp=red");
    let g = submit(
        &app,
        &s2,
        b"green sample of the second submitter",
        "tlp=green",
    );
    let id = |v: &Value| v["analysis_id"].as_str().unwrap().to_string();
    let sha = |v: &Value| v["sha256"].as_str().unwrap().to_string();
    let all = [&a, &red, &g];
    let cases: [(&str, &String, Vec<&Value>); 5] = [
        ("first submitter", &s1, vec![&a]),
        ("second submitter", &s2, vec![&red, &g]),
        ("reader", &reader, vec![&a, &g]),
        ("bridge", &bridge, vec![&a, &g]),
        ("admin", &admin, vec![&a, &red, &g]),
    ];
    for (who, key, sees) in &cases {
        let visible = |v: &Value| sees.iter().any(|s| id(s) == id(v));
        let want = |v: &Value| if visible(v) { 200 } else { 404 };
        for v in all {
            let (status, _) = get(&app, key, &format!("/v1/samples/{}", sha(v)));
            assert_eq!(status, want(v), "{who}: lookup of {}", v["analysis_id"]);
            let (status, _) = get(&app, key, &format!("/v1/analyses/{}", id(v)));
            assert_eq!(status, want(v), "{who}: analysis {}", v["analysis_id"]);
            let (status, _) = get(&app, key, &format!("/v1/analyses/{}/stix", id(v)));
            assert_eq!(status, want(v), "{who}: STIX of {}", v["analysis_id"]);
            let r = app.get_with_key(&format!("/v1/samples/{}/content?format=zip", sha(v)), key);
            assert_eq!(r.status, want(v), "{who}: zip of {}", v["analysis_id"]);
        }
        let (_, list) = get(&app, key, "/v1/analyses");
        let mut listed: Vec<String> = list["analyses"]
            .as_array()
            .unwrap()
            .iter()
            .map(id)
            .collect();
        let mut expected: Vec<String> = sees.iter().map(|v| id(v)).collect();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected, "{who}: list");
        let (lines, _) = feed_until(&app, key, None, |l| l.len() >= expected.len());
        let mut fed: Vec<String> = lines.iter().map(id).collect();
        fed.sort();
        assert_eq!(fed, expected, "{who}: feed");
        // TAXII never serves TLP:RED, not even to those who may read it.
        let r = app.get_with_key("/taxii2/api/collections/analyses/objects/", key);
        assert_eq!(r.status, 200, "{who}: TAXII: {}", r.body);
        let mut served: Vec<String> = serde_json::from_str::<Value>(&r.body).unwrap()["objects"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["type"] == "malware-analysis")
            .map(|o| o["id"].as_str().unwrap().to_string())
            .collect();
        let mut expected: Vec<String> = sees
            .iter()
            .filter(|v| id(v) != id(&red))
            .map(|v| sandgnat::export::stix::analysis_id(id(v).parse().unwrap()))
            .collect();
        served.sort();
        expected.sort();
        assert_eq!(served, expected, "{who}: TAXII");
    }
    for path in [
        format!("/v1/samples/{}", sha(&a)),
        "/v1/analyses".to_string(),
        "/v1/export/analyses".to_string(),
        format!("/v1/analyses/{}/stix", id(&a)),
        format!("/v1/samples/{}/content?format=zip", sha(&a)),
        "/taxii2/".to_string(),
    ] {
        let r = app.get(&path).unwrap();
        assert_eq!(r.status, 401, "{path} without a key: {}", r.body);
        assert_eq!(
            app.get_with_key(&path, "sgk_not_a_key").status,
            401,
            "{path}"
        );
    }
}
