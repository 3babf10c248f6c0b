//! The TAXII 2.1 server end to end: the real binary behind its front end,
//! read by the OASIS `taxii2-client` (discovery, API root, collections,
//! every page of objects) with every object checked by the OASIS
//! validator in strict mode; and the protocol details a client relies on
//! (media type, date headers, paging, filters, errors) over the socket.

mod common;

use std::process::Command;

use base64::Engine as _;
use common::db::TestDb;
use common::{request_unix, Appliance, Response};
use serde_json::{json, Value};

const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
const MEDIA: &str = "application/taxii+json;version=2.1";

/// Walks the server as a TAXII client does and validates what it gets.
const WALK: &str = r#"
import json, sys
from taxii2client.v21 import Server, as_pages
from stix2validator import validate_instance, ValidationOptions
url, key, per = sys.argv[1], sys.argv[2], int(sys.argv[3])
server = Server(url, user="any-name", password=key)
root = server.default
out = {"title": server.title, "root": root.title, "versions": root.versions, "collections": {}}
for c in root.collections:
    objects, pages = [], 0
    for env in as_pages(c.get_objects, per_request=per):
        pages += 1
        objects.extend(env.get("objects", []))
    manifest = []
    for env in as_pages(c.get_manifest, per_request=per):
        manifest.extend(env.get("objects", []))
    errors = []
    for o in objects:
        r = validate_instance(o, ValidationOptions(strict=True))
        if not r.is_valid:
            errors.append([o["id"], [str(e) for e in r.errors]])
    out["collections"][c.alias] = {"id": c.id, "can_write": c.can_write, "pages": pages,
                                   "objects": objects, "manifest": manifest, "errors": errors}
print(json.dumps(out))
"#;

fn walk(app: &Appliance, key: &str, per_page: usize) -> Value {
    let python = common::py::python_with(&[
        ("taxii2client", "taxii2-client"),
        ("stix2validator", "stix2-validator"),
    ]);
    let out = Command::new(python)
        .args(["-c", WALK])
        .arg(format!("http://{}/taxii2/", app.plain))
        .arg(key)
        .arg(per_page.to_string())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn submit(app: &Appliance, key: &str, tlp: &str, body: &[u8]) -> String {
    let query = format!("tlp={}", tlp.replace('+', "%2B"));
    let name = format!("{tlp}.bin");
    let v = app.accepted(key, &query, body, &[("X-Filename", &name)]);
    v["analysis_id"].as_str().unwrap().to_string()
}

fn get(app: &Appliance, path: &str, key: &str) -> Response {
    request_unix(&app.socket, "GET", path, &[("X-API-Key", key)]).unwrap()
}

fn basic(key: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("someone:{key}"));
    format!("Basic {token}")
}

/// A collection's objects: the marking names in order, how many files
/// and how many analyses. Asserts what holds for every collection: each
/// object once, markings first, and every `sample_ref` pointing at a file
/// served before it.
fn summary(objects: &Value) -> (Vec<String>, usize, usize) {
    let objects = objects.as_array().unwrap();
    let mut seen = std::collections::HashSet::new();
    let (mut markings, mut files, mut analyses) = (Vec::new(), 0, 0);
    for o in objects {
        let id = o["id"].as_str().unwrap();
        assert!(seen.insert(id), "{id} twice in {objects:#?}");
        match o["type"].as_str().unwrap() {
            "marking-definition" => {
                assert_eq!(files + analyses, 0, "markings come first");
                markings.push(o["name"].as_str().unwrap().to_string());
            }
            "file" => files += 1,
            "malware-analysis" => {
                let sample = o["sample_ref"].as_str().unwrap();
                assert!(seen.contains(sample), "{sample} not served before {id}");
                analyses += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    (markings, files, analyses)
}

#[test]
fn a_taxii_client_reads_every_page_of_every_collection() {
    let db = TestDb::create("taxii");
    let app = Appliance::start(
        "taxii",
        "workers = 2\n",
        &format!(
            "[database]\nurl = \"{}\"\n[intake]\nstatic_analysis_enabled = false\n\
             [queue]\nrunners = 0\n",
            db.url()
        ),
    );
    let alice = app.new_key("submitter");
    let bob = app.new_key("submitter");
    let reader = app.new_key("reader");
    let tag = std::process::id();
    submit(&app, &alice, "clear", EICAR);
    for tlp in ["green", "amber", "amber+strict"] {
        submit(&app, &alice, tlp, format!("taxii {tlp} {tag}").as_bytes());
    }
    submit(&app, &bob, "red", format!("taxii red {tag}").as_bytes());
    submit(&app, &bob, "green", format!("taxii bob {tag}").as_bytes());
    // A sample seen again: the same file, not served twice.
    submit(&app, &alice, "green", EICAR);
    // A sample first named under TLP:AMBER+STRICT, then seen as CLEAR: the
    // CLEAR analysis's file has no name, so it is another file.
    let shared = format!("taxii shared {tag}");
    submit(&app, &alice, "amber+strict", shared.as_bytes());
    submit(&app, &alice, "clear", shared.as_bytes());

    // The reader sees everyone's but TLP:RED, in pages of two objects.
    let seen = walk(&app, &reader, 2);
    assert_eq!(seen["versions"], json!([MEDIA]), "{seen}");
    let colls = &seen["collections"];
    let levels = ["TLP:CLEAR", "TLP:GREEN", "TLP:AMBER", "TLP:AMBER+STRICT"];
    // (collection, its levels, files, analyses)
    let expect = [
        ("analyses", 4, 7, 8),
        ("tlp-clear", 1, 2, 2),
        ("tlp-green", 2, 4, 5),
        ("tlp-amber", 3, 5, 6),
    ];
    for (alias, markings, files, analyses) in expect {
        let c = &colls[alias];
        assert_eq!(c["errors"], json!([]), "{alias}: {c:#}");
        assert_eq!(c["can_write"], false);
        let want = (
            levels[..markings].iter().map(|s| s.to_string()).collect(),
            files,
            analyses,
        );
        assert_eq!(summary(&c["objects"]), want, "{alias}: {c:#}");
        let total = markings + files + analyses;
        assert_eq!(c["pages"], total.div_ceil(2), "{alias}");
        // The manifest lists the same objects in the same order.
        let ids: Vec<&Value> = c["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| &o["id"])
            .collect();
        let listed: Vec<&Value> = c["manifest"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["id"])
            .collect();
        assert_eq!(ids, listed, "{alias}");
    }
    // Submission order: after the markings, the EICAR sample and its
    // analysis, malicious.
    let first = &colls["analyses"]["objects"];
    assert_eq!(first[4]["type"], "file");
    assert_eq!(first[4]["name"], "clear.bin");
    assert_eq!(first[5]["type"], "malware-analysis");
    assert_eq!(first[5]["result"], "malicious");

    // A submitter, with its key as a Basic password, sees only its own.
    let own = walk(&app, &alice, 100);
    let c = &own["collections"]["analyses"];
    assert_eq!(c["pages"], 1);
    assert_eq!(summary(&c["objects"]).1, 6, "{c:#}");
    assert_eq!(summary(&c["objects"]).2, 7, "{c:#}");
    assert_eq!(summary(&own["collections"]["tlp-green"]["objects"]).2, 4);

    // Over the socket: the media type, the date headers, and added_after
    // given back from the last one.
    let objects = "/taxii2/api/collections/analyses/objects/";
    // Seven: the four markings, EICAR's file and analysis, the next file.
    let r = get(&app, &format!("{objects}?limit=7"), &reader);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some(MEDIA));
    let page = r.json();
    assert_eq!(page["more"], true);
    assert_eq!(page["objects"].as_array().unwrap().len(), 7);
    assert_eq!(
        r.header("x-taxii-date-added-first"),
        Some("2022-10-01T00:00:00.000000Z")
    );
    let first_added = r.header("x-taxii-date-added-first").unwrap().to_string();
    let last = r.header("x-taxii-date-added-last").unwrap().to_string();
    assert!(first_added < last, "{first_added} {last}");
    let r = get(
        &app,
        &format!("{objects}?added_after={last}&limit=100"),
        &reader,
    );
    // Everything after the second analysis: six analyses (one with a
    // file served before), no markings.
    let after = r.json()["objects"].as_array().unwrap().clone();
    let count = |kind: &str| after.iter().filter(|o| o["type"] == kind).count();
    assert_eq!(
        (
            count("marking-definition"),
            count("file"),
            count("malware-analysis")
        ),
        (0, 5, 6),
        "{}",
        r.body
    );
    let after_all = r.header("x-taxii-date-added-last").unwrap().to_string();
    let r = get(&app, &format!("{objects}?added_after={after_all}"), &reader);
    assert_eq!(r.json(), json!({ "more": false }), "{}", r.body);
    assert_eq!(r.header("x-taxii-date-added-first"), None);

    // Filters: by type, and one object by id.
    let r = get(
        &app,
        &format!("{objects}?match%5Btype%5D=malware-analysis"),
        &reader,
    );
    let found = r.json()["objects"].as_array().unwrap().clone();
    assert_eq!(found.len(), 8);
    assert!(found.iter().all(|o| o["type"] == "malware-analysis"));
    let id = found[0]["id"].as_str().unwrap();
    let r = get(&app, &format!("{objects}{id}/"), &reader);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["objects"], json!([found[0]]));
    assert!(found[0]["sample_ref"].is_string());
    let green = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
    let r = get(&app, &format!("{objects}{green}/"), &reader);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["objects"][0]["name"], "TLP:GREEN");
    let r = get(
        &app,
        &format!("/taxii2/api/collections/tlp-clear/objects/{green}/"),
        &reader,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = get(&app, &format!("{objects}{id}/versions/"), &reader);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({ "more": false, "versions": [found[0]["modified"]] })
    );
    for missing in [
        "malware-analysis--00000000-0000-4000-8000-000000000000",
        "indicator--00000000-0000-4000-8000-000000000000",
    ] {
        let r = get(&app, &format!("{objects}{missing}/"), &reader);
        assert_eq!(r.status, 404, "{}", r.body);
        assert_eq!(r.json()["error"], "not_found");
    }
    // Not the reader's: bob's TLP:RED analysis is in no collection.
    let red = get(
        &app,
        &format!("{objects}?match%5Btype%5D=marking-definition&limit=1000"),
        &bob,
    );
    assert!(!red.body.contains("TLP:RED"), "{}", red.body);

    // Errors: JSON, with the reason.
    for (path, status, code) in [
        (format!("{objects}?limit=zero"), 400, "invalid_parameter"),
        (format!("{objects}?next=forged"), 400, "invalid_parameter"),
        (
            format!("{objects}?added_after=yesterday"),
            400,
            "invalid_parameter",
        ),
        (
            "/taxii2/api/collections/tlp-red/objects/".to_string(),
            404,
            "not_found",
        ),
    ] {
        let r = get(&app, &path, &reader);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert_eq!(r.json()["error"], code, "{path}");
    }
    let r = request_unix(
        &app.socket,
        "GET",
        "/taxii2/",
        &[
            ("X-API-Key", &reader),
            ("Accept", "application/vnd.oasis.taxii+json; version=2.0"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 406, "{}", r.body);
    // Basic with the key as password works; a wrong one is refused.
    let r = request_unix(
        &app.socket,
        "GET",
        "/taxii2/",
        &[("Authorization", &basic(&reader))],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request_unix(
        &app.socket,
        "GET",
        "/taxii2/",
        &[("Authorization", &basic("sg_wrong"))],
    )
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    let r = request_unix(&app.socket, "POST", objects, &[("X-API-Key", &reader)]).unwrap();
    assert_eq!(r.status, 405, "{}", r.body);
}

#[test]
fn a_key_sent_as_a_basic_password_has_the_per_key_rate_limit() {
    let app = Appliance::start_with(
        "taxii-rate",
        "workers = 1\n",
        "rate_limit_per_key = 3\nrate_limit_per_ip = 1000",
        "",
    );
    let url = format!("http://{}/healthz", app.plain);
    // Twenty requests on one connection; each answer's status after it.
    let answers = |auth: &[&str]| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "-w", " %{http_code}\n"])
            .args(auth);
        for _ in 0..20 {
            cmd.arg(&url);
        }
        String::from_utf8(cmd.output().expect("run curl").stdout).unwrap()
    };
    // The key is only counted, not checked, at the front end: any will do.
    let limited = answers(&["-u", "anyone:sg_some_key"]);
    assert!(
        limited
            .contains(r#""error":"rate_limited","message":"too many requests with this API key"#)
            && limited.contains(" 429"),
        "{limited}"
    );
    let free = answers(&[]);
    assert_eq!(free.matches(" 200").count(), 20, "{free}");
}

/// A TAXII client that polls with `added_after` must not miss an analysis
/// whose transaction began before one it already has and commits after:
/// the server holds back what is younger than the oldest open transaction.
#[test]
fn polling_with_added_after_never_misses_a_late_commit() {
    use std::io::{BufRead, BufReader, Write};
    let db = TestDb::create("taxii_late");
    let app = Appliance::start(
        "taxii-late",
        "workers = 1\n",
        &format!(
            "[database]\nurl = \"{}\"\n[intake]\nstatic_analysis_enabled = false\n\
             [queue]\nrunners = 0\n",
            db.url()
        ),
    );
    let alice = app.new_key("submitter");
    let reader = app.new_key("reader");
    let objects = "/taxii2/api/collections/analyses/objects/";
    let analyses_in = |r: &Response| -> Vec<String> {
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["objects"]
            .as_array()
            .map(|o| {
                o.iter()
                    .filter(|o| o["type"] == "malware-analysis")
                    .map(|o| o["id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let stix_id = |id: &str| sandgnat::export::stix::analysis_id(id.parse().unwrap());

    let first = submit(&app, &alice, "green", b"first, committed at once");
    let held = uuid::Uuid::new_v4();
    let mut psql = Command::new("psql")
        .args([db.url().as_str(), "-v", "ON_ERROR_STOP=1", "-qtA"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_psql = psql.stdin.take().unwrap();
    let mut from_psql = BufReader::new(psql.stdout.take().unwrap());
    writeln!(
        to_psql,
        "BEGIN; INSERT INTO samples (sha256, sha1, md5, size, file_type, storage_path)
           VALUES (repeat('c', 64), repeat('c', 40), repeat('c', 32), 1, 'data', '');
         INSERT INTO analyses (id, sample_sha256, tlp) VALUES ('{held}', repeat('c', 64), 'green');
         SELECT 'held';"
    )
    .unwrap();
    let mut line = String::new();
    from_psql.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "held");
    let later = submit(
        &app,
        &alice,
        "green",
        b"later, committed while the first waits",
    );

    let page = get(&app, objects, &reader);
    let seen = analyses_in(&page);
    assert!(seen.contains(&stix_id(&first)), "{seen:?}");
    assert!(
        !seen.contains(&stix_id(&later)),
        "served an analysis younger than a transaction still open"
    );
    let last = page
        .header("X-TAXII-Date-Added-Last")
        .expect("a date header")
        .to_string();

    writeln!(to_psql, "COMMIT;").unwrap();
    drop(to_psql);
    assert!(psql.wait().unwrap().success());
    let after = format!("{objects}?added_after={last}");
    let seen = analyses_in(&get(&app, &after, &reader));
    assert!(seen.contains(&stix_id(&held.to_string())), "{seen:?}");
    assert!(seen.contains(&stix_id(&later)), "{seen:?}");
}
