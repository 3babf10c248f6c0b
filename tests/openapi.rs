//! The API contract against the real appliance: `GET /v1/openapi.json`
//! is the document the package ships (with this appliance's limits), and
//! schemathesis, through the TLS front end with an admin key, exercises
//! every operation in it with generated valid and invalid requests: no
//! 5xx, every answer's status, content type, headers and body as
//! documented, invalid data refused with a 4xx.

mod common;

use std::process::Command;

use common::db::TestDb;
use common::{request_unix, request_unix_body, Appliance};
use serde_json::{json, Value};

const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// Examples per operation and phase. Bounded so a CI run stays well
/// under two minutes on two cores.
const MAX_EXAMPLES: u32 = 25;

/// Invalid data must get a 4xx: the front end's own refusals count (414
/// for a request line over `server.limit_request_line`, 413 for a body
/// over its limit), a 5xx does not.
const CONFIG: &str = r#"
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "414", "415", "422"]
"#;

/// What the generated requests draw on. Real ids and hashes from the
/// seeded analyses become the parameters' examples, so requests reach
/// the found paths (200s, zips, STIX) and not only the 404s random ids
/// get. Cursors and TAXII `next` tokens are opaque: only the server makes
/// them, so a made-up one is rightly refused and the valid ones are the
/// ones it gave out.
struct Seed {
    analysis: String,
    sha256: String,
    job: String,
    list_cursor: String,
    feed_cursor: String,
    taxii_next: String,
}

fn add_test_data(doc: &mut Value, seed: &Seed) {
    let params = &mut doc["components"]["parameters"];
    params["AnalysisId"]["example"] = json!(seed.analysis);
    params["JobId"]["example"] = json!(seed.job);
    params["CollectionId"]["example"] = json!("analyses");
    params["TaxiiNext"]["schema"] = json!({ "type": "string", "enum": [seed.taxii_next] });
    let paths = &mut doc["paths"];
    let mut set = |path: &str, name: &str, key: &str, value: Value| {
        for p in paths[path]["get"]["parameters"].as_array_mut().unwrap() {
            if p["name"] == name {
                p[key] = value.clone();
            }
        }
    };
    set(
        "/v1/samples/{sha256}",
        "sha256",
        "example",
        json!(seed.sha256),
    );
    set(
        "/v1/samples/{sha256}/content",
        "sha256",
        "example",
        json!(seed.sha256),
    );
    set("/v1/audit", "analysis_id", "example", json!(seed.analysis));
    let cursor = |c: &str| json!({ "type": "string", "enum": [c] });
    set(
        "/v1/analyses",
        "cursor",
        "schema",
        cursor(&seed.list_cursor),
    );
    set(
        "/v1/export/analyses",
        "cursor",
        "schema",
        cursor(&seed.feed_cursor),
    );
}

fn get_json(app: &Appliance, path: &str, key: &str) -> Value {
    let r = request_unix(&app.socket, "GET", path, &[("X-API-Key", key)]).unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.json()
}

#[test]
fn schemathesis_finds_every_operation_keeps_its_contract() {
    let python = common::py::python_with(&[("schemathesis", "schemathesis")]);
    let db = TestDb::create("openapi");
    // No runners: jobs stay available for the bridge routes to claim, and
    // a short long-poll bound keeps generated claims quick (the served
    // document says so, so generated claims stay within it).
    let app = Appliance::start(
        "openapi",
        "workers = 2\n",
        &format!(
            "[database]\nurl = \"{}\"\n[queue]\nrunners = 0\nmax_wait_seconds = 1\n",
            db.url()
        ),
    );
    let admin = app.new_key("admin");
    let mut seeded = Vec::new();
    for (body, tlp) in [
        (EICAR.to_vec(), "clear"),
        (b"openapi sample green".to_vec(), "green"),
        (b"openapi sample red".to_vec(), "red"),
    ] {
        let r = request_unix_body(
            &app.socket,
            "POST",
            &format!("/v1/submit?tlp={tlp}"),
            &[("X-API-Key", &admin), ("X-Filename", "seed.bin")],
            Some(&body),
        )
        .unwrap();
        assert_eq!(r.status, 202, "{}", r.body);
        let accepted = r.json();
        let id = accepted["analysis_id"].as_str().unwrap().to_string();
        let r = request_unix(
            &app.socket,
            "GET",
            &format!("/v1/analyses/{id}"),
            &[("X-API-Key", &admin)],
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        seeded.push((id, accepted["sha256"].as_str().unwrap().to_string()));
    }
    let job = db.scalar("SELECT id FROM jobs ORDER BY created_at LIMIT 1");
    assert!(!job.is_empty(), "the seeded analyses queued no job");
    let next = get_json(&app, "/v1/analyses?limit=1", &admin)["next"]
        .as_str()
        .unwrap()
        .to_string();
    let feed = request_unix(
        &app.socket,
        "GET",
        "/v1/export/analyses?limit=1",
        &[("X-API-Key", &admin)],
    )
    .unwrap();
    // The body is chunked: its first JSON line is the first analysis.
    let first: Value = feed
        .body
        .lines()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(Value::is_object)
        })
        .expect("a feed line");
    let taxii = get_json(
        &app,
        "/taxii2/api/collections/analyses/objects/?limit=1",
        &admin,
    );
    let seed = Seed {
        analysis: seeded[0].0.clone(),
        sha256: seeded[0].1.clone(),
        job,
        list_cursor: next.rsplit_once("cursor=").unwrap().1.to_string(),
        feed_cursor: first["cursor"].as_str().unwrap().to_string(),
        taxii_next: taxii["next"].as_str().unwrap().to_string(),
    };

    // The served document: the shipped file, with this appliance's limits.
    let r = app.get("/v1/openapi.json").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let mut doc = r.json();
    let shipped: Value = serde_json::from_str(include_str!("../assets/openapi.json")).unwrap();
    assert_eq!(doc["paths"], shipped["paths"]);
    assert_eq!(
        doc["components"]["schemas"]["ClaimRequest"]["properties"]["wait_seconds"]["maximum"],
        1
    );
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();

    add_test_data(&mut doc, &seed);
    let schema = app.dir.join("openapi-with-examples.json");
    std::fs::write(&schema, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let report = app.dir.join("schemathesis.ndjson");
    let config = app.dir.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = Command::new(&python)
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .arg("run")
        .arg(&schema)
        .arg("--url")
        .arg(format!("https://{}", app.tls))
        .arg("--tls-verify")
        .arg(app.dir.join("certs/self-signed.pem"))
        .args(["--header", &format!("X-API-Key: {admin}")])
        .args(["--checks", "all"])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--seed", "20"])
        // One: hypothesis parses lambdas with `ast`, which fails in threads
        // on the Python 3.11 the venv may have.
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--report", "ndjson", "--report-ndjson-path"])
        .arg(&report)
        .arg("--no-color")
        // Its crash cache goes in the working directory: not the checkout.
        .current_dir(&app.dir)
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "schemathesis failed (the appliance's log, kept with SANDGNAT_TEST_KEEP=1, is {}):\n{stdout}\n{stderr}",
        app.log.display()
    );
    // Every operation was exercised.
    let after = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label).map(str::trim))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        after("Tested:"),
        operations.to_string(),
        "{operations} operations documented:\n{stdout}"
    );
    let cases = stdout
        .lines()
        .find(|l| l.contains(" generated, "))
        .unwrap_or_default()
        .trim()
        .to_string();
    let generated: u64 = cases
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(generated >= operations as u64 * 10, "{cases}");
    println!("{operations} operations, {generated} generated cases ({cases})");
}
