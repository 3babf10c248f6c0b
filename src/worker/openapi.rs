//! The API contract: `assets/openapi.json`, an OpenAPI 3.1 document
//! written by hand, built into the binary and served at
//! `GET /v1/openapi.json` with this appliance's own limits in place of the
//! defaults it was written with. The package installs the same file under
//! /usr/share/sandgnat/. The tests below hold it to the router: every
//! operation it names is routed and every routed one is in it.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::state::AppState;
use crate::config::Settings;

/// The document as written, with the default configuration's limits.
pub const DOCUMENT: &str = include_str!("../../assets/openapi.json");

/// The document with `settings`' limits, so a generated client and a
/// fuzzer see what this appliance accepts.
pub fn document(settings: &Settings) -> Value {
    // The file is checked by the tests below; a document that did not
    // parse could not have been built.
    let mut doc: Value = serde_json::from_str(DOCUMENT).unwrap_or(Value::Null);
    let q = &settings.queue;
    let lease = [
        ("maximum", Value::from(q.max_lease_seconds)),
        ("default", Value::from(q.lease_seconds)),
    ];
    let limits: [(&str, &[(&str, Value)]); 4] = [
        (
            "/components/schemas/ClaimRequest/properties/max_jobs",
            &[("maximum", Value::from(q.max_claim_batch))],
        ),
        (
            "/components/schemas/ClaimRequest/properties/wait_seconds",
            &[("maximum", Value::from(q.max_wait_seconds))],
        ),
        (
            "/components/schemas/ClaimRequest/properties/lease_seconds",
            &lease,
        ),
        (
            "/components/schemas/HeartbeatRequest/properties/lease_seconds",
            &lease,
        ),
    ];
    for (pointer, values) in limits {
        if let Some(Value::Object(schema)) = doc.pointer_mut(pointer) {
            for (k, v) in values {
                schema.insert((*k).to_owned(), v.clone());
            }
        }
    }
    doc
}

/// `GET /v1/openapi.json`, for anyone: it says nothing the package does not.
pub async fn serve(State(app): State<AppState>) -> Response {
    // A worker's settings do not change while it runs.
    static RENDERED: OnceLock<bytes::Bytes> = OnceLock::new();
    let body = RENDERED.get_or_init(|| {
        bytes::Bytes::from(serde_json::to_vec(&document(&app.settings)).unwrap_or_default())
    });
    let mut resp = body.clone().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::worker::routes::{label_index, operations};

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
}
