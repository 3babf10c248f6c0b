//! One analysis as STIX 2.1: the sample as a `file` observable, the
//! analysis as a `malware-analysis`, and the analysis's TLP as the OASIS
//! TLP 2.0 marking definition that both carry. Pure: it reads an
//! `AnalysisRow` and returns JSON, so the read routes (one analysis,
//! TAXII) share it and tests check it without a database.
//!
//! Identifiers are deterministic, so a platform that imports the same
//! analysis twice, or the same sample from two analyses, merges them:
//! - the `file` id is the one STIX 2.1 prescribes for observables (UUIDv5
//!   in the SCO namespace over the RFC 8785 canonical JSON of the ID
//!   contributing properties), so any STIX library computes the same one;
//! - the `malware-analysis` id is derived from the analysis id. It cannot
//!   be the analysis id itself: those are UUIDv7, and STIX (and the OASIS
//!   validator) want domain objects to carry UUIDv4. A v4 UUID's 122 bits
//!   only have to be unpredictable to other producers, so a hash of the
//!   analysis id in our own namespace serves.
//!
//! YARA matches: an `indicator` with `pattern_type: "yara"` must carry
//! the rule's text, which the appliance does not keep per match, and
//! `analysis_sco_refs` may only point at observables. So the rule names
//! go where the standard takes strings: `result_name` (a single string)
//! names the first rule that matched, and `labels` lists them all.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sha1::Digest as _;
use uuid::Uuid;

use super::view::AnalysisRow;

/// STIX 2.1's namespace for observable ids (STIX 2.1, 2.9).
const SCO_NAMESPACE: Uuid = uuid::uuid!("00abedb4-aa42-466c-9c01-fed23315a9b7");

/// What `malware-analysis` ids are derived in: ours, so no other producer
/// computes the same id for something else.
const ANALYSIS_NAMESPACE: &[u8] = b"sandgnat malware-analysis v1:";

/// The id of the OASIS TLP 2.0 extension that TLP marking definitions use.
const TLP2_EXTENSION: &str = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d";

/// When OASIS published the TLP 2.0 marking definitions; part of each one.
const TLP2_CREATED: &str = "2022-10-01T00:00:00.000Z";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StixError {
    #[error("analysis has TLP {0:?}, which has no TLP 2.0 marking")]
    UnknownTlp(String),
    #[error("RFC 8785 canonical JSON of {0} is not implemented (only integers up to 2^53)")]
    UnsupportedNumber(String),
}

/// A TLP 2.0 level, as the OASIS marking definitions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tlp {
    Clear,
    Green,
    Amber,
    AmberStrict,
    Red,
}

impl Tlp {
    /// Every level, from the least strict.
    pub const ALL: [Tlp; 5] = [
        Tlp::Clear,
        Tlp::Green,
        Tlp::Amber,
        Tlp::AmberStrict,
        Tlp::Red,
    ];

    /// When OASIS published the marking definitions.
    pub fn published() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(TLP2_CREATED)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    /// The database's spelling; TLP 1.0's `white` is TLP 2.0's CLEAR.
    pub fn parse(s: &str) -> Option<Tlp> {
        Some(match s {
            "clear" | "white" => Tlp::Clear,
            "green" => Tlp::Green,
            "amber" => Tlp::Amber,
            "amber+strict" => Tlp::AmberStrict,
            "red" => Tlp::Red,
            _ => return None,
        })
    }

    fn value(self) -> &'static str {
        match self {
            Tlp::Clear => "clear",
            Tlp::Green => "green",
            Tlp::Amber => "amber",
            Tlp::AmberStrict => "amber+strict",
            Tlp::Red => "red",
        }
    }

    /// The id OASIS published for this level (cti-stix-common-objects,
    /// extension-definition-specifications/tlp-2.0).
    pub fn marking_id(self) -> &'static str {
        match self {
            Tlp::Clear => "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
            Tlp::Green => "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
            Tlp::Amber => "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
            Tlp::AmberStrict => "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
            Tlp::Red => "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
        }
    }

    /// The marking definition object, exactly as OASIS published it.
    pub fn marking(self) -> Value {
        json!({
            "type": "marking-definition",
            "spec_version": "2.1",
            "id": self.marking_id(),
            "created": TLP2_CREATED,
            "name": format!("TLP:{}", self.value().to_ascii_uppercase()),
            "extensions": {
                TLP2_EXTENSION: {
                    "extension_type": "property-extension",
                    "tlp_2_0": self.value(),
                }
            }
        })
    }
}

/// A STIX timestamp: UTC, `Z`, millisecond precision (what `created` and
/// `modified` require). Truncates, so the order of two times is kept.
fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The `file` observable of the analysed sample, named `name` (see the
/// route: the name must be the same for every analysis of the sample, or
/// the id would not be).
pub fn file(row: &AnalysisRow, name: Option<&str>, tlp: Tlp) -> Result<Value, StixError> {
    let mut file = Map::new();
    file.insert("type".into(), json!("file"));
    file.insert("spec_version".into(), json!("2.1"));
    file.insert(
        "hashes".into(),
        json!({ "MD5": row.md5, "SHA-1": row.sha1, "SHA-256": row.sha256 }),
    );
    file.insert("size".into(), json!(row.size));
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        file.insert("name".into(), json!(name));
    }
    file.insert("object_marking_refs".into(), json!([tlp.marking_id()]));
    let id = sco_id("file", &file, FILE_ID_PROPERTIES)?;
    file.insert("id".into(), json!(id));
    Ok(Value::Object(file))
}

/// The ID contributing properties of `file` (STIX 2.1, 6.7).
const FILE_ID_PROPERTIES: &[&str] = &["hashes", "name", "extensions", "parent_directory_ref"];

/// The deterministic id of an observable: UUIDv5 in the SCO namespace over
/// the canonical JSON of its ID contributing properties that are present,
/// with only one of its hashes.
pub fn sco_id(
    kind: &str,
    object: &Map<String, Value>,
    props: &[&str],
) -> Result<String, StixError> {
    let mut contributing = Map::new();
    for &p in props {
        let Some(v) = object.get(p) else { continue };
        let v = if p == "hashes" {
            match v.as_object().and_then(one_hash) {
                Some(h) => h,
                None => continue,
            }
        } else {
            v.clone()
        };
        contributing.insert(p.to_owned(), v);
    }
    let uuid = if contributing.is_empty() {
        // The spec's fallback when no contributing property is present.
        Uuid::new_v4()
    } else {
        uuid_v5(
            SCO_NAMESPACE,
            canonical_json(&Value::Object(contributing))?.as_bytes(),
        )
    };
    Ok(format!("{kind}--{uuid}"))
}

/// The one hash an id is computed from, in the spec's order of preference.
fn one_hash(hashes: &Map<String, Value>) -> Option<Value> {
    ["MD5", "SHA-1", "SHA-256", "SHA-512"]
        .iter()
        .find_map(|k| hashes.get_key_value(*k))
        .or_else(|| hashes.iter().next())
        .map(|(k, v)| json!({ k.as_str(): v }))
}

/// RFC 4122 version 5: SHA-1 over namespace and name.
fn uuid_v5(namespace: Uuid, name: &[u8]) -> Uuid {
    let mut h = sha1::Sha1::new();
    h.update(namespace.as_bytes());
    h.update(name);
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// JSON in the canonical form of RFC 8785 (JCS): no whitespace, object
/// members sorted by their UTF-16 code units, strings with only the
/// escapes the RFC requires. Numbers are limited to integers a double
/// holds exactly, which is all any id here needs.
pub fn canonical_json(v: &Value) -> Result<String, StixError> {
    let mut out = String::new();
    write_canonical(v, &mut out)?;
    Ok(out)
}

fn write_canonical(v: &Value, out: &mut String) -> Result<(), StixError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            const EXACT: u64 = 1 << 53;
            match (n.as_i64(), n.as_u64()) {
                (Some(i), _) if i.unsigned_abs() <= EXACT => out.push_str(&i.to_string()),
                (_, Some(u)) if u <= EXACT => out.push_str(&u.to_string()),
                _ => return Err(StixError::UnsupportedNumber(n.to_string())),
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out)?;
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut keys: Vec<&String> = members.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(&members[k], out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The `malware-analysis` id of an analysis: see the module doc.
pub fn analysis_id(id: Uuid) -> String {
    let digest = sha2::Sha256::new()
        .chain_update(ANALYSIS_NAMESPACE)
        .chain_update(id.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    format!(
        "malware-analysis--{}",
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    )
}

/// Whether the analysis reached a status it does not leave.
fn finished(status: &str) -> bool {
    matches!(status, "completed" | "failed")
}

/// The `malware-analysis` of `row`, about the sample `file_id`.
///
/// `result` does not wait for the analysis to finish: YARA runs at intake,
/// before the analysis is recorded, and nothing after it changes what
/// matched, so a match is a final `malicious` from the first read. No
/// match is `unknown`, finished or not: the appliance never concludes
/// `benign` (a rule that does not fire proves nothing).
pub fn malware_analysis(row: &AnalysisRow, file_id: &str, tlp: Tlp) -> Value {
    let rules = row.rule_names();
    let mut ma = Map::new();
    ma.insert("type".into(), json!("malware-analysis"));
    ma.insert("spec_version".into(), json!("2.1"));
    ma.insert("id".into(), json!(analysis_id(row.id)));
    ma.insert("created".into(), json!(timestamp(row.created_at)));
    ma.insert(
        "modified".into(),
        json!(timestamp(row.updated_at.max(row.created_at))),
    );
    ma.insert("product".into(), json!("sandgnat"));
    ma.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    ma.insert("submitted".into(), json!(timestamp(row.created_at)));
    ma.insert("analysis_started".into(), json!(timestamp(row.created_at)));
    if finished(&row.status) {
        ma.insert(
            "analysis_ended".into(),
            json!(timestamp(row.updated_at.max(row.created_at))),
        );
    }
    ma.insert(
        "result".into(),
        json!(if rules.is_empty() {
            "unknown"
        } else {
            "malicious"
        }),
    );
    if let Some(first) = rules.first() {
        ma.insert("result_name".into(), json!(first));
        ma.insert("labels".into(), json!(rules));
    }
    ma.insert("sample_ref".into(), json!(file_id));
    ma.insert("object_marking_refs".into(), json!([tlp.marking_id()]));
    Value::Object(ma)
}

/// The STIX objects of one analysis: its TLP marking, the sample, the
/// analysis. `file_name` is the name the sample's `file` carries.
pub fn objects(row: &AnalysisRow, file_name: Option<&str>) -> Result<Vec<Value>, StixError> {
    let tlp = Tlp::parse(&row.tlp).ok_or_else(|| StixError::UnknownTlp(row.tlp.clone()))?;
    let file = file(row, file_name, tlp)?;
    let file_id = file["id"].as_str().unwrap_or_default().to_owned();
    Ok(vec![
        tlp.marking(),
        file,
        malware_analysis(row, &file_id, tlp),
    ])
}

/// A bundle of `objects` with the id `id` (a bundle is a wrapper, not an
/// object with versions; any v4 id will do).
pub fn bundle(id: Uuid, objects: Vec<Value>) -> Value {
    json!({ "type": "bundle", "id": format!("bundle--{id}"), "objects": objects })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::types::Json;

    const MD5: &str = "44d88612fea8a8f36de82e1278abb02f";
    const SHA1: &str = "3395856ce81f2b7382dee72602f798b642f14140";
    const SHA256: &str = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";

    fn row(tlp: &str, status: &str, yara: Value) -> AnalysisRow {
        let t = DateTime::parse_from_rfc3339("2026-12-05T03:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        AnalysisRow {
            id: Uuid::parse_str("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap(),
            status: status.into(),
            filename: Some("eicar.com".into()),
            tags: vec![],
            tlp: tlp.into(),
            priority: 0,
            yara: Json(yara),
            results: Json(json!({})),
            created_at: t,
            updated_at: t + chrono::Duration::seconds(90),
            submitted_by: Some(1),
            yara_cached: false,
            yara_rules_digest: None,
            node: None,
            sha256: SHA256.into(),
            sha1: SHA1.into(),
            md5: MD5.into(),
            size: 68,
            file_type: "text".into(),
        }
    }

    #[test]
    fn canonical_json_follows_rfc_8785() {
        // Members sort by UTF-16 code units: U+1F600 (a surrogate pair,
        // 0xD83D...) comes before U+E000, unlike in code point order.
        let v = json!({ "\u{e000}": 1, "\u{1f600}": 2, "b": [true, null, -3], "a": "x" });
        assert_eq!(
            canonical_json(&v).unwrap(),
            "{\"a\":\"x\",\"b\":[true,null,-3],\"\u{1f600}\":2,\"\u{e000}\":1}"
        );
        // Only the escapes the RFC names; everything else stays literal,
        // U+2028 and U+007F included. (What python-stix2's canonicaliser
        // gives for the same name.)
        let v = json!({ "name": "é\u{2028}\"\\\u{1}\u{7f}\n😀" });
        assert_eq!(
            canonical_json(&v).unwrap(),
            "{\"name\":\"é\u{2028}\\\"\\\\\\u0001\u{7f}\\n😀\"}"
        );
        assert!(matches!(
            canonical_json(&json!(1.5)),
            Err(StixError::UnsupportedNumber(_))
        ));
        assert!(canonical_json(&json!(u64::MAX)).is_err());
    }

    #[test]
    fn file_ids_are_the_ones_python_stix2_computes() {
        // Both ids are what stix2.File(hashes=..., name=..., size=68).id
        // gives (python-stix2 3.0.2) for the EICAR file's three hashes.
        let r = row("green", "queued", json!([]));
        let named = file(&r, Some("eicar.com"), Tlp::Green).unwrap();
        assert_eq!(named["id"], "file--0b39ce01-760c-5d8f-a56a-38ac15398835");
        let unnamed = file(&r, None, Tlp::Green).unwrap();
        assert_eq!(unnamed["id"], "file--5a0c55a1-48a3-5003-9776-42946d1054cb");
        assert_eq!(unnamed.get("name"), None);
        // An empty name is no name.
        assert_eq!(file(&r, Some(""), Tlp::Green).unwrap()["id"], unnamed["id"]);
        // Markings do not take part in the id.
        assert_eq!(
            file(&r, Some("eicar.com"), Tlp::Red).unwrap()["id"],
            named["id"]
        );
    }

    #[test]
    fn one_hash_follows_the_spec_order() {
        let h = |v: Value| one_hash(v.as_object().unwrap());
        assert_eq!(
            h(json!({ "SHA-256": "c", "SHA-1": "b", "MD5": "a" })),
            Some(json!({ "MD5": "a" }))
        );
        assert_eq!(
            h(json!({ "SHA-256": "c", "SHA-1": "b" })),
            Some(json!({ "SHA-1": "b" }))
        );
        assert_eq!(h(json!({})), None);
    }

    #[test]
    fn uuid_v5_matches_rfc_4122() {
        // The RFC's own example namespace (DNS) and python's uuid5.
        let dns = uuid::uuid!("6ba7b810-9dad-11d1-80b4-00c04fd430c8");
        assert_eq!(
            uuid_v5(dns, b"www.example.com").to_string(),
            "2ed6657d-e927-568b-95e1-2665a8aea6a2"
        );
    }

    #[test]
    fn the_analysis_id_is_a_stable_v4_uuid() {
        let a = row("amber", "queued", json!([]));
        let id = analysis_id(a.id);
        assert_eq!(id, analysis_id(a.id));
        assert_ne!(id, analysis_id(Uuid::nil()));
        let uuid = Uuid::parse_str(id.strip_prefix("malware-analysis--").unwrap()).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
    }

    #[test]
    fn a_match_is_malicious_from_the_start_and_names_its_rules() {
        let yara = json!([{ "rule": "EICAR_Test_File" }, { "rule": "X", "namespace": "packers" }]);
        let objs = objects(&row("white", "queued", yara), Some("eicar.com")).unwrap();
        let [marking, file, ma] = &objs[..] else {
            panic!("{objs:?}")
        };
        assert_eq!(marking["name"], "TLP:CLEAR");
        assert_eq!(marking["id"], Tlp::Clear.marking_id());
        assert_eq!(ma["result"], "malicious");
        assert_eq!(ma["result_name"], "EICAR_Test_File");
        assert_eq!(ma["labels"], json!(["EICAR_Test_File", "packers:X"]));
        assert_eq!(ma["sample_ref"], file["id"]);
        assert_eq!(ma["created"], "2026-12-05T03:00:00.123Z");
        assert_eq!(ma["modified"], "2026-12-05T03:01:30.123Z");
        // Not finished: no end time yet.
        assert_eq!(ma.get("analysis_ended"), None);
        assert_eq!(ma["object_marking_refs"], json!([Tlp::Clear.marking_id()]));
        assert_eq!(
            file["object_marking_refs"],
            json!([Tlp::Clear.marking_id()])
        );
    }

    #[test]
    fn no_match_is_unknown_and_a_finished_analysis_has_an_end() {
        let objs = objects(&row("amber+strict", "completed", json!([])), None).unwrap();
        let ma = &objs[2];
        assert_eq!(ma["result"], "unknown");
        assert_eq!(ma.get("result_name"), None);
        assert_eq!(ma.get("labels"), None);
        assert_eq!(ma["analysis_ended"], "2026-12-05T03:01:30.123Z");
        assert_eq!(objs[0]["name"], "TLP:AMBER+STRICT");
        assert_eq!(
            objects(&row("purple", "queued", json!([])), None),
            Err(StixError::UnknownTlp("purple".into()))
        );
    }

    #[test]
    fn tlp_levels_order_from_clear_to_red() {
        assert!(Tlp::Clear < Tlp::Green && Tlp::Green < Tlp::Amber);
        assert!(Tlp::Amber < Tlp::AmberStrict && Tlp::AmberStrict < Tlp::Red);
        assert_eq!(Tlp::parse("white"), Some(Tlp::Clear));
        assert_eq!(Tlp::parse("CLEAR"), None);
        assert!(Tlp::ALL.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Tlp::published().to_rfc3339(), "2022-10-01T00:00:00+00:00");
    }
}
