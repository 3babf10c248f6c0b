//! Tests holding the API contract (`openapi`, `assets/openapi.json`) to
//! the router (`routes`): apart from both so that neither imports the
//! other.

use std::collections::BTreeSet;

use serde_json::Value;

use super::openapi::{document, DOCUMENT};
use super::routes::{label_index, operations};
use crate::config::Settings;

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn parsed() -> Value {
    serde_json::from_str(DOCUMENT).expect("assets/openapi.json is JSON")
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let doc = parsed();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.as_str()) {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    let routed: BTreeSet<(String, String)> = operations()
        .iter()
        .map(|o| (o.method.to_string(), o.path.to_string()))
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routed but not in assets/openapi.json: {undocumented:?}; \
         documented but not routed: {unrouted:?}"
    );
}

/// Roles are stated per operation, and the errors everyone can get
/// are documented where they can happen.
#[test]
fn every_operation_states_its_roles_and_errors() {
    let doc = parsed();
    let roles = ["reader", "submitter", "bridge", "admin"];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let at = format!("{method} {path}");
            let allowed = op["x-roles"]
                .as_array()
                .unwrap_or_else(|| panic!("{at}: x-roles"));
            assert!(
                allowed.iter().all(|r| roles.contains(&r.as_str().unwrap())),
                "{at}"
            );
            let open = op
                .get("security")
                .is_some_and(|s| s == &serde_json::json!([]));
            assert_eq!(
                open,
                allowed.is_empty(),
                "{at}: no key exactly when no role"
            );
            let responses = op["responses"].as_object().unwrap();
            if !open {
                assert!(responses.contains_key("401"), "{at}: 401");
                assert!(responses.contains_key("404"), "{at}: 404");
                assert!(responses.contains_key("503"), "{at}: 503");
                if allowed.len() < roles.len() {
                    assert!(responses.contains_key("403"), "{at}: 403");
                }
            }
            assert!(
                op["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("Roles:")),
                "{at}: the description names the roles"
            );
            assert!(op["operationId"].is_string(), "{at}: operationId");
        }
    }
}

/// Every `$ref` points at something in the document.
#[test]
fn every_reference_resolves() {
    fn walk(v: &Value, doc: &Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    let pointer = r.strip_prefix('#').expect("a local $ref");
                    assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
                }
                m.values().for_each(|x| walk(x, doc));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, doc)),
            _ => {}
        }
    }
    let doc = parsed();
    walk(&doc, &doc);
}

#[test]
fn every_route_is_counted_under_its_own_label() {
    for o in operations() {
        assert_ne!(label_index(o.path), 0, "{} has no metrics label", o.path);
    }
}

#[test]
fn the_served_document_carries_this_appliances_limits() {
    let mut settings = Settings::default();
    settings.queue.max_wait_seconds = 7;
    settings.queue.max_claim_batch = 3;
    let doc = document(&settings);
    let claim = &doc["components"]["schemas"]["ClaimRequest"]["properties"];
    assert_eq!(claim["wait_seconds"]["maximum"], 7);
    assert_eq!(claim["max_jobs"]["maximum"], 3);
    // The file itself holds the defaults.
    let defaults = document(&Settings::default());
    assert_eq!(defaults, parsed());
}
