//! One request's life in a worker, around the router: a request id, the
//! scoreboard entries the master reads (what is being served, in-flight
//! count, requests by route and status, latency), the access log line, and
//! the decision to recycle after `max_requests`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, Version};
use axum::response::IntoResponse;
use http_body::Body as _;
use hyper::body::Incoming;
use tower::ServiceExt;
use tracing::Instrument;

use super::routes::RouteLabel;
use super::shared::Shared;
use super::unread::Leftover;
use crate::accesslog::AccessRecord;
use crate::api_error::ApiError;
use crate::frontend::limits::{check_decoded, HeaderLimits};
use crate::logging::ACCESS_TARGET;
use crate::scoreboard::{Slot, SlotState};

pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let slot = shared.slot();
    let seq = shared.seq.fetch_add(1, Relaxed) + 1;
    let request_id = crate::request_id::of(req.headers()).unwrap_or_else(crate::request_id::fresh);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let version = req.version();
    let request_headers = req.headers().clone();
    slot.note_request(seq, &format!("{method} {path} request_id={request_id}"));
    if let Some(len) = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        slot.bytes_received.fetch_add(len, Relaxed);
    }
    let in_flight = InFlight::new(slot);
    let span = tracing::info_span!("request", request_id = %request_id);

    let leftover = Leftover::default();
    let req = req.map(|b| leftover.wrap(b));
    let mut resp = match check_limits(&shared.settings.server, &req) {
        Err(e) => {
            drop(req);
            e.into_response()
        }
        Ok(()) => {
            let routed = shared.router.clone().oneshot(req);
            match (Polled {
                seq,
                slot,
                inner: routed,
            })
            .instrument(span.clone())
            .await
            {
                Ok(r) => r,
                Err(never) => match never {},
            }
        }
    };
    leftover.settle(&mut resp).await;
    drop(in_flight);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let elapsed = started.elapsed();
    let route = resp
        .extensions()
        .get::<RouteLabel>()
        .map(|r| r.0)
        .unwrap_or(0);
    slot.record(route, resp.status().as_u16(), elapsed.as_secs_f64());

    let record = AccessRecord {
        remote_addr: request_headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok()),
        user: None,
        time: chrono::Local::now(),
        method: method.as_str(),
        path: &path,
        query: query.as_deref(),
        protocol: protocol(version),
        status: resp.status().as_u16(),
        body_bytes: resp.body().size_hint().exact(),
        duration: elapsed,
        pid: shared.pid,
        request_headers: &request_headers,
        response_headers: resp.headers(),
    };
    let line = shared.access.render(&record);
    span.in_scope(|| tracing::info!(target: ACCESS_TARGET, "{line}"));

    recycle_if_due(&shared, slot);
    // A worker that is leaving serves no further request on this
    // connection: saying so lets the front end take its next request
    // elsewhere instead of sending it on a connection about to close.
    if shared.trigger.is_stopping() {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    Ok(resp)
}

/// Gunicorn's request line and header limits, for clients that reach a
/// worker directly: the front end's rule for decoded fields, with its
/// answers.
fn check_limits<B>(server: &crate::config::Server, req: &Request<B>) -> Result<(), ApiError> {
    check_host(req)?;
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let limits = HeaderLimits::of(server);
    check_decoded(req.method().as_str(), target, req.headers(), limits).map_err(ApiError::from)
}

/// RFC 9112 §3.2, as the front end checks it (`frontend::limits`): one
/// valid Host, and none missing from an HTTP/1.1 request. Hyper does not
/// check this itself.
fn check_host<B>(req: &Request<B>) -> Result<(), ApiError> {
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let mut hosts = req.headers().get_all(axum::http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == Version::HTTP_11 => {
            Err(bad("an HTTP/1.1 request must have a Host field"))
        }
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(bad("more than one Host field")),
        (Some(h), None) if !crate::frontend::limits::valid_host(h.as_bytes().trim_ascii()) => {
            Err(bad("the Host field is not a host[:port]"))
        }
        (Some(_), None) => Ok(()),
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

/// After `max_requests`, asks to be replaced: the slot says so, the
/// master starts a successor and, once it is ready, stops this worker,
/// which then drains and leaves. It serves on until then, so recycling
/// never leaves the pool short.
fn recycle_if_due(shared: &Shared, slot: &Slot) {
    if shared.max_requests == 0
        || slot.handled.load(Relaxed) < shared.max_requests
        || shared.trigger.is_stopping()
        || slot.state() == SlotState::Recycling
    {
        return;
    }
    tracing::info!(
        requests = shared.max_requests,
        "autorestarting worker after max_requests"
    );
    slot.set_state(SlotState::Recycling);
}

/// Counts the request as in flight until it is answered or dropped.
struct InFlight<'a>(&'a Slot);

impl<'a> InFlight<'a> {
    fn new(slot: &'a Slot) -> Self {
        slot.in_flight.fetch_add(1, Relaxed);
        InFlight(slot)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Marks request `seq` as the one executing while its future is polled, so
/// a worker that hangs inside a handler names the request that hung it.
struct Polled<'a, F> {
    seq: u64,
    slot: &'a Slot,
    inner: F,
}

impl<F: Future> Future for Polled<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned; the other fields are
        // never moved out.
        let this = unsafe { self.get_unchecked_mut() };
        this.slot.polling_seq.store(this.seq, Relaxed);
        // SAFETY: as above.
        let out = unsafe { Pin::new_unchecked(&mut this.inner) }.poll(cx);
        this.slot.polling_seq.store(0, Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri("/healthz").version(version);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).unwrap()
    }

    /// The worker answered a field over `limit_request_field_size` with
    /// 431 and never counted fields; the front end answers 400 and counts
    /// them (431 over `limit_request_fields`), as the README says. The
    /// worker now answers as the front end does.
    #[test]
    fn limits_are_the_front_ends() {
        let server = crate::config::Server {
            limit_request_line: 40,
            limit_request_fields: 3,
            limit_request_field_size: 20,
            ..Default::default()
        };
        let with = |fields: &[(&str, &str)], path: &str| {
            let mut b = Request::builder().uri(path).header("host", "a");
            for (n, v) in fields {
                b = b.header(*n, *v);
            }
            check_limits(&server, &b.body(()).unwrap())
        };
        with(&[("x-a", "0123456789abcde")], "/").unwrap();
        let e = with(&[("x-a", "0123456789abcdef")], "/").unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_request"));
        let e = with(&[("x-a", "1"), ("x-b", "2"), ("x-c", "3")], "/").unwrap_err();
        assert_eq!(e.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let e = with(&[], &format!("/{}", "a".repeat(40))).unwrap_err();
        assert_eq!(e.status, StatusCode::URI_TOO_LONG);
    }

    #[test]
    fn host_is_checked_as_rfc_9112_says() {
        let e = check_host(&req(Version::HTTP_11, &[])).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("Host"), "{}", e.message);
        check_host(&req(Version::HTTP_10, &[])).unwrap();
        check_host(&req(Version::HTTP_11, &["localhost:8443"])).unwrap();
        for hosts in [&["a", "b"][..], &["a b"], &["u@a"]] {
            let e = check_host(&req(Version::HTTP_11, hosts)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{hosts:?}");
        }
    }
}
