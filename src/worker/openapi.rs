//! The API contract: `assets/openapi.json`, an OpenAPI 3.1 document
//! written by hand, built into the binary and served at
//! `GET /v1/openapi.json` with this appliance's own limits in place of the
//! defaults it was written with. The package installs the same file under
//! /usr/share/sandgnat/. `contract` holds it to the router in tests:
//! every operation it names is routed and every routed one is in it.

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
    // The file is checked by the tests (`super::contract`); a document
    // that did not parse could not have been built.
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
