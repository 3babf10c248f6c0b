//! `GET /v1/analyses/{id}/stix` end to end: the real binary and database,
//! and the bundles checked by the clients a threat-intelligence platform
//! uses: the OASIS validator in strict mode, and python-stix2 recomputing
//! the `file` id from the hashes and name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::db::TestDb;
use common::{Appliance, Response};
use serde_json::{json, Value};

const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
const AMBER: &str = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421";
const RED: &str = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1";

/// Validates a document in strict mode (what `stix2_validator --strict`
/// runs) and computes, with python-stix2,
/// the id of its `file` from that file's hashes, name and size.
const CHECK: &str = r#"
import json, sys
import stix2
from stix2validator import validate_file, ValidationOptions
doc = json.load(open(sys.argv[1]))
res = validate_file(sys.argv[1], ValidationOptions(strict=True))
errors = [str(e) for o in res.object_results for e in o.errors]
errors += [str(w) for o in res.object_results for w in o.warnings]
if res.fatal:
    errors.append(str(res.fatal))
files = [o for o in doc.get("objects", []) if o.get("type") == "file"]
ids = [stix2.File(hashes=f["hashes"], name=f.get("name"), size=f["size"]).id for f in files]
print(json.dumps({"valid": bool(res.is_valid), "errors": errors, "file_ids": ids}))
"#;

struct Checker {
    python: PathBuf,
    dir: PathBuf,
}

impl Checker {
    fn new(dir: &Path) -> Self {
        let python =
            common::py::python_with(&[("stix2validator", "stix2-validator"), ("stix2", "stix2")]);
        Checker {
            python,
            dir: dir.to_path_buf(),
        }
    }

    /// What the validator and python-stix2 say about `doc`.
    fn check(&self, doc: &Value) -> Value {
        let path = self.dir.join(format!("bundle-{:x}.json", rand_tag()));
        std::fs::write(&path, doc.to_string()).unwrap();
        let out = Command::new(&self.python)
            .args(["-c", CHECK])
            .arg(&path)
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Asserts `doc` is valid STIX 2.1 in strict mode and its file id is
    /// the one python-stix2 computes; returns that id.
    fn assert_valid(&self, doc: &Value) -> String {
        let r = self.check(doc);
        assert_eq!(r["valid"], true, "{r}\n{doc:#}");
        assert_eq!(r["errors"], json!([]), "{doc:#}");
        let ours = object(doc, "file")["id"].clone();
        assert_eq!(r["file_ids"], json!([ours]), "{doc:#}");
        ours.as_str().unwrap().to_string()
    }
}

fn rand_tag() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn submit(app: &Appliance, key: &str, query: &str, body: &[u8], filename: &str) -> String {
    let v = app.accepted(key, query, body, &[("X-Filename", filename)]);
    v["analysis_id"].as_str().unwrap().to_string()
}

fn stix(app: &Appliance, id: &str, key: &str) -> Response {
    app.get_with_key(&format!("/v1/analyses/{id}/stix"), key)
}

/// The bundle of a 200 answer, with the STIX media type.
fn bundle(r: &Response) -> Value {
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("application/stix+json;version=2.1")
    );
    let b = r.json();
    assert_eq!(b["type"], "bundle");
    b
}

fn object<'a>(bundle: &'a Value, kind: &str) -> &'a Value {
    let found: Vec<&Value> = bundle["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["type"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} in {bundle:#}");
    found[0]
}

fn assert_not_found(r: &Response) {
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"], "not_found");
}

#[test]
fn bundles_are_valid_stix_with_stable_ids_for_those_who_may_see_them() {
    let db = TestDb::create("export_stix");
    let app = Appliance::start(
        "export-stix",
        "workers = 2\n",
        &format!(
            "[database]\nurl = \"{}\"\n[intake]\nstatic_analysis_enabled = false\n\
             [queue]\nrunners = 0\n",
            db.url()
        ),
    );
    let checker = Checker::new(&app.dir);
    let alice = app.new_key("submitter");
    let bob = app.new_key("submitter");
    let reader = app.new_key("reader");
    let bridge = app.new_key("bridge");
    let admin = app.new_key("admin");

    // (a) A sample a bundled rule matches, TLP:GREEN, with a file name.
    let matched = submit(&app, &alice, "tlp=green", EICAR, "eicar.com");
    let b = bundle(&stix(&app, &matched, &reader));
    let file_id = checker.assert_valid(&b);
    let file = object(&b, "file");
    assert_eq!(file["name"], "eicar.com");
    assert_eq!(file["size"], EICAR.len());
    assert_eq!(
        file["hashes"],
        json!({
            "MD5": "44d88612fea8a8f36de82e1278abb02f",
            "SHA-1": "3395856ce81f2b7382dee72602f798b642f14140",
            "SHA-256": "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f",
        })
    );
    let ma = object(&b, "malware-analysis").clone();
    assert_eq!(ma["result"], "malicious");
    assert_eq!(ma["result_name"], "eicar:EICAR_Test_File");
    assert_eq!(ma["labels"], json!(["eicar:EICAR_Test_File"]));
    assert_eq!(ma["product"], "sandgnat");
    assert_eq!(ma["sample_ref"], file_id.as_str());
    assert_eq!(ma["object_marking_refs"], json!([GREEN]));
    assert_eq!(file["object_marking_refs"], json!([GREEN]));
    assert_eq!(object(&b, "marking-definition")["name"], "TLP:GREEN");
    assert_eq!(ma.get("analysis_ended"), None, "still queued: {ma}");

    // Once the bridge completes it, the same object in a later version.
    let r = app.post_json(
        &bridge,
        "/v1/queues/analysis/claim",
        json!({"max_jobs": 1, "lease_seconds": 60}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let job = r.json()["jobs"][0].clone();
    assert_eq!(job["analysis_id"], matched.as_str());
    let done = app.post_json(
        &bridge,
        &format!("/v1/jobs/{}/complete", job["id"].as_str().unwrap()),
        json!({"lease_token": job["lease_token"], "result": {}}),
    );
    assert_eq!(done.status, 200, "{}", done.body);
    let b = bundle(&stix(&app, &matched, &alice));
    assert_eq!(checker.assert_valid(&b), file_id);
    let finished = object(&b, "malware-analysis");
    assert_eq!(finished["id"], ma["id"]);
    assert_eq!(finished["created"], ma["created"]);
    assert!(finished["modified"].as_str() >= ma["modified"].as_str());
    assert!(finished["analysis_ended"].is_string(), "{finished}");

    // The same bytes again under another name: the same file, named as
    // first submitted; another analysis.
    let again = submit(&app, &alice, "tlp=amber", EICAR, "renamed.exe");
    let b = bundle(&stix(&app, &again, &reader));
    assert_eq!(checker.assert_valid(&b), file_id);
    assert_eq!(object(&b, "file")["name"], "eicar.com");
    assert_ne!(object(&b, "malware-analysis")["id"], ma["id"]);
    assert_eq!(object(&b, "marking-definition")["id"], AMBER);

    // (b) Bytes no rule matches, TLP:RED: only admin and its submitter.
    let body = format!("sandgnat stix test {:x}", rand_tag());
    let unmatched = submit(&app, &bob, "tlp=red", body.as_bytes(), "notes.txt");
    assert_not_found(&stix(&app, &unmatched, &reader));
    assert_not_found(&stix(&app, &unmatched, &bridge));
    assert_not_found(&stix(&app, &unmatched, &alice));
    for key in [&bob, &admin] {
        let b = bundle(&stix(&app, &unmatched, key));
        checker.assert_valid(&b);
        let ma = object(&b, "malware-analysis");
        assert_eq!(ma["result"], "unknown");
        assert_eq!(ma.get("result_name"), None);
        assert_eq!(ma["object_marking_refs"], json!([RED]));
        assert_eq!(object(&b, "file")["name"], "notes.txt");
        assert_eq!(object(&b, "marking-definition")["name"], "TLP:RED");
    }
    // A submitter sees only its own, matched or not.
    assert_not_found(&stix(&app, &matched, &bob));

    // Bad input: JSON errors, never a bundle.
    let r = stix(&app, "not-a-uuid", &reader);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_id");
    assert_not_found(&stix(&app, "00000000-0000-4000-8000-000000000000", &admin));
    let r = app
        .get(&format!("/v1/analyses/{matched}/stix"))
        .expect("request");
    assert_eq!(r.status, 401, "{}", r.body);

    // The operator's `sandgnat export --format stix`: one valid bundle a
    // line, the same file id as the API's, then the closing cursor line.
    // The feed stops below the server's oldest open transaction, which
    // another database (tests beside this one) may hold a moment: read
    // again until the matched analysis is there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut saw_matched = false;
    while !saw_matched {
        assert!(
            std::time::Instant::now() < deadline,
            "the matched analysis never came"
        );
        let mut cmd = Command::new(common::BIN);
        cmd.args(["export", "--format", "stix", "--config"])
            .arg(app.dir.join("sandgnat.toml"));
        common::clean_env(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let (closing, bundles) = lines.split_last().unwrap();
        assert_eq!(closing["end"], true);
        assert_eq!(closing["count"].as_u64(), Some(bundles.len() as u64));
        for b in bundles {
            let id = checker.assert_valid(b);
            if object(b, "malware-analysis")["result"] == "malicious" {
                assert_eq!(id, file_id, "{b:#}");
                saw_matched = true;
            }
        }
    }

    // The checker can fail: an analysis id straight from the database
    // (UUIDv7) is not an id the validator accepts.
    let mut bad = bundle(&stix(&app, &matched, &reader));
    for o in bad["objects"].as_array_mut().unwrap() {
        if o["type"] == "malware-analysis" {
            o["id"] = json!(format!("malware-analysis--{matched}"));
        }
    }
    assert_eq!(checker.check(&bad)["valid"], false);
}

#[test]
fn a_file_name_from_a_stricter_analysis_stays_out() {
    let db = TestDb::create("export_stix_name");
    let app = Appliance::start(
        "export-stix-name",
        "workers = 1\n",
        &format!(
            "[database]\nurl = \"{}\"\n[intake]\nstatic_analysis_enabled = false\n\
             [queue]\nrunners = 0\n",
            db.url()
        ),
    );
    let checker = Checker::new(&app.dir);
    let alice = app.new_key("submitter");
    let reader = app.new_key("reader");
    let body = format!("sandgnat stix name test {:x}", rand_tag());
    // First seen as TLP:AMBER+STRICT under a telling name, then as CLEAR.
    let strict = submit(
        &app,
        &alice,
        "tlp=amber%2Bstrict",
        body.as_bytes(),
        "acme-payroll.xls",
    );
    let clear = submit(&app, &alice, "tlp=clear", body.as_bytes(), "sample.bin");
    let b = bundle(&stix(&app, &clear, &reader));
    let unnamed = checker.assert_valid(&b);
    assert_eq!(object(&b, "file").get("name"), None, "{b:#}");
    assert!(!b.to_string().contains("acme-payroll"));
    let b = bundle(&stix(&app, &strict, &reader));
    let named = checker.assert_valid(&b);
    assert_eq!(object(&b, "file")["name"], "acme-payroll.xls");
    assert_ne!(named, unnamed);
}
