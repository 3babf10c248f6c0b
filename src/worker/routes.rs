//! The worker's routes and the label each one is counted under in metrics.
//! Labels are route templates (`/v1/analyses/{id}`), never raw paths, so a
//! client cannot grow the metric set.

use axum::extract::{MatchedPath, Query, Request};
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::openapi;
use super::state::AppState;
use crate::api_error::ApiError;
use crate::export::taxii;
use crate::{analyses, bridge, export, intake, retention};

/// Every label a request can be counted under; index 0 is for requests
/// that matched no route. At most `scoreboard::ROUTES` entries.
pub const ROUTES: &[&str] = &[
    "other",
    "/healthz",
    "/__debug",
    "/readyz",
    "/v1/submit",
    "/submit",
    "/v1/analyses/{id}",
    "/v1/audit",
    "/v1/queues/{queue}/claim",
    "/v1/jobs/{id}",
    "/v1/jobs/{id}/heartbeat",
    "/v1/jobs/{id}/progress",
    "/v1/jobs/{id}/complete",
    "/v1/jobs/{id}/fail",
    "/v1/jobs/{id}/cancel",
    "/v1/samples/{sha256}/content",
    "/v1/samples/{sha256}",
    "/v1/analyses",
    "/v1/export/analyses",
    "/v1/analyses/{id}/stix",
    "/taxii2/...",
    "/status",
    "/v1/openapi.json",
];

// A label past the scoreboard's last route slot would be counted in it.
const _: () = assert!(ROUTES.len() <= crate::scoreboard::ROUTES);

/// The route a response was produced by, attached by `tag_route`.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub usize);

pub fn label_index(template: &str) -> usize {
    if template.starts_with("/__debug/") {
        return 2;
    }
    // One label for the TAXII server: its seven routes would take a
    // quarter of the scoreboard's route slots.
    let template = if template.starts_with("/taxii2/") {
        "/taxii2/..."
    } else if template.starts_with("/status") {
        // The page, its form posts and its style sheet under one label.
        "/status"
    } else {
        template
    };
    ROUTES.iter().position(|r| *r == template).unwrap_or(0)
}

/// One public operation: what `assets/openapi.json` documents under
/// `paths`, and what the router serves. Routes exist only through
/// [`operations`], so the document test sees every one.
pub struct Operation {
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<AppState>,
}

fn op<H, T>(method: Method, path: &'static str, handler: H) -> Operation
where
    H: Handler<T, AppState>,
    T: 'static,
{
    // Only the standard methods are used here, each of which has a filter.
    let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
    Operation {
        method,
        path,
        handler: on(filter, handler),
    }
}

/// Every public operation (the fault-injection routes are not).
pub fn operations() -> Vec<Operation> {
    use Method as M;
    vec![
        op(M::GET, "/healthz", healthz),
        op(M::GET, "/readyz", analyses::readyz),
        op(M::GET, "/v1/openapi.json", openapi::serve),
        op(M::POST, "/v1/submit", intake::submit),
        op(M::POST, "/submit", intake::submit),
        op(M::GET, "/v1/analyses/{id}", analyses::get_analysis),
        op(M::GET, "/v1/audit", analyses::get_audit),
        op(
            M::GET,
            "/v1/analyses/{id}/stix",
            export::stix_route::get_stix,
        ),
        op(M::GET, "/taxii2/", taxii::discovery),
        op(M::GET, "/taxii2/api/", taxii::api_root),
        op(M::GET, "/taxii2/api/collections/", taxii::collections),
        op(
            M::GET,
            "/taxii2/api/collections/{id}/",
            taxii::get_collection,
        ),
        op(
            M::GET,
            "/taxii2/api/collections/{id}/objects/",
            taxii::objects,
        ),
        op(
            M::GET,
            "/taxii2/api/collections/{id}/objects/{object_id}/",
            taxii::object,
        ),
        op(
            M::GET,
            "/taxii2/api/collections/{id}/objects/{object_id}/versions/",
            taxii::versions,
        ),
        op(
            M::GET,
            "/taxii2/api/collections/{id}/manifest/",
            taxii::manifest,
        ),
        op(M::POST, "/v1/queues/{queue}/claim", bridge::claim),
        op(M::GET, "/v1/jobs/{id}", bridge::get_job),
        op(M::POST, "/v1/jobs/{id}/heartbeat", bridge::heartbeat),
        op(M::POST, "/v1/jobs/{id}/progress", bridge::progress),
        op(M::POST, "/v1/jobs/{id}/complete", bridge::complete),
        op(M::POST, "/v1/jobs/{id}/fail", bridge::fail),
        op(M::POST, "/v1/jobs/{id}/cancel", bridge::cancel),
        op(
            M::GET,
            "/v1/samples/{sha256}/content",
            export::download::sample_content,
        ),
        op(
            M::DELETE,
            "/v1/samples/{sha256}/content",
            retention::route::purge_content,
        ),
        // Any hash: the segment is named as the content route's, which
        // the router requires of one position.
        op(M::GET, "/v1/samples/{sha256}", export::lookup::lookup),
        op(M::GET, "/v1/analyses", export::list::list),
        op(M::GET, "/v1/export/analyses", export::feed_route::export),
    ]
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for o in operations() {
        router = router.route(o.path, o.handler);
    }
    // The operator's page is HTML for a browser, not part of the API
    // the document describes.
    router = router.merge(crate::status::routes());
    if state.settings.debug.fault_injection {
        router = router
            .route("/__debug/hang", get(debug_hang))
            .route("/__debug/crash", get(debug_crash))
            .route("/__debug/sleep", get(debug_sleep))
            .route("/__debug/confined", get(debug_confined))
            .route(
                "/__debug/echo-headers",
                get(debug_echo_headers).post(debug_echo_headers),
            );
    }
    router
        .route_layer(middleware::from_fn(tag_route))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(json_errors))
        // Bodies are streamed and bounded by intake itself.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn tag_route(req: Request, next: Next) -> Response {
    let label = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| label_index(m.as_str()))
        .unwrap_or(0);
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(RouteLabel(label));
    resp
}

/// Liveness: answers as long as this worker's event loop turns. Touches no
/// database, so a database outage never makes the service look dead.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// axum's own extractor rejections (a path segment that is not UTF-8, a
/// query it cannot read) answer in plain text; every error here is the
/// JSON the API documents.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let plain = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if !plain || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal_error",
        _ => "invalid_request",
    };
    // Rejection texts are one line; a longer body is not one of them.
    let body = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .unwrap_or_default();
    ApiError::new(status, code, String::from_utf8_lossy(&body).trim()).into_response()
}

async fn not_found(method: Method, req: Request) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", req.uri().path()))
}

async fn method_not_allowed(method: Method, req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", req.uri().path()),
    )
}

/// Blocks the worker's only event-loop thread: the heartbeat stops and the
/// master must abort this worker. Fault injection only.
async fn debug_hang() -> &'static str {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Kills the worker mid-request. Fault injection only.
async fn debug_crash() -> &'static str {
    std::process::abort()
}

/// The request's headers as the worker received them, so tests can see
/// what the front end forwarded. Fault injection only.
/// A body is read to its end first (counted, not kept), so an upload cut
/// by the front end shows up here as a failed read.
async fn debug_echo_headers(
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut body_bytes = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.to_string()))?;
        body_bytes += frame.data_ref().map_or(0, |d| d.len());
    }
    let mut map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                json!(String::from_utf8_lossy(v.as_bytes())),
            )
        })
        .collect();
    map.insert("body-bytes".into(), json!(body_bytes));
    Ok(Json(serde_json::Value::Object(map)))
}

#[derive(Deserialize)]
struct SleepQuery {
    ms: u64,
}

/// A slow request that still lets the event loop turn. Fault injection only.
async fn debug_sleep(Query(q): Query<SleepQuery>) -> impl IntoResponse {
    tokio::time::sleep(std::time::Duration::from_millis(q.ms.min(600_000))).await;
    Json(json!({ "slept_ms": q.ms }))
}

#[derive(Deserialize)]
struct ConfinedQuery {
    /// A file to try opening for reading besides `/etc/shadow` (the
    /// tests name the settings file).
    open: Option<String>,
    /// A TCP port on 127.0.0.1 to try connecting to.
    port: Option<u16>,
}

/// What this worker's confinement lets it do, tried for real: `execve`,
/// opening files, connecting to a TCP port. Each answer is `{"ok": bool,
/// "errno": n}`. Fault injection only.
async fn debug_confined(Query(q): Query<ConfinedQuery>) -> Json<serde_json::Value> {
    fn outcome(r: std::io::Result<()>) -> serde_json::Value {
        match r {
            Ok(()) => json!({ "ok": true }),
            Err(e) => json!({ "ok": false, "errno": e.raw_os_error(), "error": e.to_string() }),
        }
    }
    // An argument vector the kernel cannot read: unconfined, the call
    // fails with EFAULT (or EACCES from Landlock) before it could replace
    // this worker; under the seccomp filter it fails with EPERM.
    // SAFETY: execve with a valid path; a bad argv only makes it fail.
    let execve = unsafe {
        libc::execve(
            c"/bin/true".as_ptr(),
            std::ptr::dangling::<*const libc::c_char>(),
            std::ptr::null(),
        )
    };
    let execve = outcome(if execve == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    });
    let mut opened = serde_json::Map::new();
    for path in std::iter::once("/etc/shadow").chain(q.open.as_deref()) {
        opened.insert(
            path.to_string(),
            outcome(std::fs::File::open(path).map(drop)),
        );
    }
    let mut report = json!({ "execve": execve, "open": opened });
    if let Some(port) = q.port {
        let connected = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map(drop);
        report["connect"] = outcome(connected);
    }
    Json(report)
}
