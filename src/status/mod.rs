//! The operator's status page, `GET /status`, served by the workers: the
//! node's processes, accept queues, traffic, job queues, latest analyses
//! and rules on one server-rendered HTML page (no script, one built-in
//! style sheet). Readers, bridges and admins sign in once with their key
//! on a form; the browser then holds a session cookie (`session`), never
//! the key. Every answer carries a strict Content-Security-Policy.

pub mod html;
pub mod local;
pub mod rates;
pub mod session;
pub mod snapshot;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::auth::{Caller, Role};
use crate::worker::state::AppState;

/// The roles that may see the page: it shows every process and every
/// queue, which a submitter key has no business reading.
pub const ROLES: &[Role] = &[Role::Reader, Role::Bridge, Role::Admin];

/// Largest login form accepted: a key and a little framing.
const FORM_LIMIT: usize = 4096;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("../../assets/status/status.css");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/status", get(page))
        .route("/status/login", post(login))
        .route("/status/logout", post(logout))
        .route("/status/status.css", get(css))
}

/// The headers every answer of the page carries.
fn secured(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: under it Chromium posts forms with `Origin: null`,
    // and the origin check needs the real one.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

fn html(status: StatusCode, body: String) -> Response {
    secured(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
    )
}

/// A 303 to the page, with a cookie to set or clear.
fn to_page(cookie: String) -> Response {
    let mut resp = html(StatusCode::SEE_OTHER, String::new());
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/status"));
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

fn unavailable(what: &str) -> Response {
    let mut resp = html(
        StatusCode::SERVICE_UNAVAILABLE,
        html::message(
            "Database unavailable",
            &format!("{what}: the database is not answering; retry shortly."),
        ),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    resp
}

/// Whether a form post comes from this page. Browsers send `Origin` on
/// every POST; when it is there it must name the host the request was sent
/// to. `Sec-Fetch-Site`, when sent, must say the same. The session cookie
/// is `SameSite=Strict` besides.
fn same_origin(headers: &HeaderMap) -> bool {
    let site_ok = headers
        .get("sec-fetch-site")
        .map(|v| matches!(v.as_bytes(), b"same-origin" | b"none"))
        .unwrap_or(true);
    let Some(origin) = headers.get(header::ORIGIN) else {
        return site_ok;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"))
    });
    site_ok && host.is_some() && origin_host == host
}

fn refused_cross_site(headers: &HeaderMap) {
    let show = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    tracing::warn!(
        origin = %show("origin"),
        host = %show("host"),
        sec_fetch_site = %show("sec-fetch-site"),
        "status page form posted from another site; refused"
    );
}

/// Whether the front end received the request over plain HTTP: a key
/// typed there crossed the network in clear, and the browser would drop
/// the `Secure` cookie anyway.
fn plain_http(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes() == b"http")
}

fn use_https() -> Response {
    html(
        StatusCode::FORBIDDEN,
        html::message(
            "Use HTTPS",
            "The status page signs in only over HTTPS (the front end's TLS listener).",
        ),
    )
}

/// The caller a request's session cookie stands for.
async fn session_caller(state: &AppState, headers: &HeaderMap) -> Result<Option<Caller>, Response> {
    let Some(token) = session::Token::from_headers(headers) else {
        return Ok(None);
    };
    session::resolve(&state.db, &token)
        .await
        .map_err(|_| unavailable("Cannot check the session"))
}

/// `?refresh=N`: reload every N seconds (5 to 300) with a meta refresh.
fn refresh_of(query: Option<&str>) -> Option<u64> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "refresh")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .map(|s| s.clamp(5, 300))
}

async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let caller = match session_caller(&state, &headers).await {
        Ok(Some(c)) => c,
        Ok(None) if plain_http(&headers) => return use_https(),
        Ok(None) => return html(StatusCode::UNAUTHORIZED, html::login(None)),
        Err(resp) => return resp,
    };
    if caller.require(ROLES).is_err() {
        return html(
            StatusCode::FORBIDDEN,
            html::message("Not allowed", "This key may not see the status page."),
        );
    }
    let snap = snapshot::gather(
        &state.board,
        &state.status,
        &state.settings,
        &state.db,
        &caller,
    )
    .await;
    html(
        StatusCode::OK,
        html::page(&snap, &caller, refresh_of(q.as_deref())),
    )
}

async fn login(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if !same_origin(&headers) {
        refused_cross_site(&headers);
        return html(
            StatusCode::FORBIDDEN,
            html::login(Some("This form was posted from another site.")),
        );
    }
    if plain_http(&headers) {
        return use_https();
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return html(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            html::login(Some("Send the key with the form.")),
        );
    }
    let Ok(bytes) = axum::body::to_bytes(body, FORM_LIMIT).await else {
        return html(
            StatusCode::PAYLOAD_TOO_LARGE,
            html::login(Some("The form is too large.")),
        );
    };
    let key = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.trim().to_owned());
    let caller = match state
        .keys
        .authenticate_fresh(key.as_deref(), &state.db)
        .await
    {
        Ok(c) => c,
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => {
            return unavailable("Cannot check the key")
        }
        Err(_) => {
            return html(
                StatusCode::UNAUTHORIZED,
                html::login(Some("That key is unknown or revoked.")),
            )
        }
    };
    if caller.require(ROLES).is_err() {
        return html(
            StatusCode::FORBIDDEN,
            html::login(Some(&format!(
                "A {} key may not see the status page; use a reader, bridge or admin key.",
                caller.role.as_str()
            ))),
        );
    }
    match session::create(&state.db, &caller).await {
        Ok(token) => {
            tracing::info!(event = "status_login", key = %caller.name, "status page session opened");
            to_page(token.set_cookie())
        }
        Err(_) => unavailable("Cannot open a session"),
    }
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        refused_cross_site(&headers);
        return html(
            StatusCode::FORBIDDEN,
            html::message("Not allowed", "This form was posted from another site."),
        );
    }
    if let Some(token) = session::Token::from_headers(&headers) {
        if session::end(&state.db, &token).await.is_err() {
            // The browser forgets the token anyway; the row expires.
            tracing::warn!("cannot end a status page session: the database is not answering");
        }
    }
    to_page(session::clear_cookie())
}

async fn css() -> Response {
    let mut resp = secured(CSS.into_response());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_form_post_must_come_from_this_host() {
        assert!(same_origin(&headers(&[("host", "node:8443")])));
        assert!(same_origin(&headers(&[
            ("host", "node:8443"),
            ("origin", "https://node:8443"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "node:8443"),
            ("origin", "https://evil.example"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "node:8443"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[("origin", "https://node:8443")])));
        assert!(!same_origin(&headers(&[
            ("host", "node:8443"),
            ("sec-fetch-site", "cross-site"),
        ])));
    }

    #[test]
    fn refresh_is_bounded() {
        assert_eq!(refresh_of(None), None);
        assert_eq!(refresh_of(Some("refresh=1")), Some(5));
        assert_eq!(refresh_of(Some("refresh=10")), Some(10));
        assert_eq!(refresh_of(Some("refresh=x")), None);
    }
}
