//! The front end's request phases, as a thin `ProxyHttp` implementation:
//! `request_filter` refuses what must never reach a worker (framing,
//! gunicorn's limits, body size, rate, no worker able to answer);
//! `request_body_filter` cuts a chunked body at the limit;
//! `upstream_request_filter` sets the forwarding headers;
//! `response_filter` echoes the request id; `fail_to_proxy` turns every
//! failure into the appliance's JSON error.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::StatusCode;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use super::answer::{linger, KeptAlive, Unread};
use super::limits::{self, HeaderLimits, Refusal};
use super::ratelimit::{RateLimiter, SharedCounts};
use super::whole::{self, Held};
use crate::api_error::ApiError;
use crate::config::Settings;
use crate::scoreboard::{live_within_ms, monotonic_ms, Scoreboard, SlotState, ROLE_WORKER};

/// Pingora's errors for a chunked body it cannot parse. It names them but
/// does not export them, so they are matched by name (ARCHITECTURE.md
/// lists this among what to re-check on a pingora upgrade).
const MALFORMED_BODY: [ErrorType; 2] = [
    ErrorType::new("InvalidChunk"),
    ErrorType::new("InvalidTrailerEnd"),
];

/// Ends the forwarding of a request body once its answer has gone out
/// whole: the worker answered early, so the rest of the body has no reader.
/// It is an error to pingora (so it stops the proxy loop and drops the
/// stream) but not to the client, who already has the answer.
const ANSWERED_EARLY: ErrorType = ErrorType::new("AnsweredEarly");

/// Requests being served, so a retiring front end knows when it is idle.
pub static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Set once the front end is stopping: every answer from then on says
/// `Connection: close`, so no client sends another request on a
/// connection that is about to close under it.
pub static DRAINING: AtomicBool = AtomicBool::new(false);

fn draining() -> bool {
    DRAINING.load(Relaxed)
}

pub struct FrontEnd {
    socket: PathBuf,
    limits: HeaderLimits,
    max_body: u64,
    read_timeout: Duration,
    body_timeout: Duration,
    idle_timeout: u64,
    /// How long a pooled connection to a worker may sit idle: under the
    /// workers' own keep-alive, so the front end lets go first.
    upstream_idle: Duration,
    trusted: Vec<IpAddr>,
    trust_all: bool,
    per_ip: RateLimiter,
    per_key: RateLimiter,
    /// Redis-shared counts when `redis.url` is set.
    shared: Option<SharedCounts>,
    board: Arc<Scoreboard>,
    /// How recent a worker's beat must be for it to count as able to
    /// take a request.
    live_within_ms: u64,
}

impl FrontEnd {
    pub fn new(settings: &Settings, board: Arc<Scoreboard>) -> Self {
        let p = &settings.proxy;
        let s = &settings.server;
        FrontEnd {
            socket: s.socket.clone(),
            limits: HeaderLimits::of(s),
            max_body: p.max_body_bytes,
            read_timeout: Duration::from_secs(p.read_timeout),
            body_timeout: Duration::from_secs(p.body_timeout),
            idle_timeout: p.idle_timeout,
            upstream_idle: Duration::from_millis((s.keepalive * 1000).saturating_sub(500).max(100)),
            trusted: p
                .forwarded_allow_ips
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect(),
            trust_all: p.forwarded_allow_ips.iter().any(|ip| ip == "*"),
            per_ip: RateLimiter::new(p.rate_limit_per_ip),
            per_key: RateLimiter::new(p.rate_limit_per_key),
            shared: settings
                .redis
                .url
                .as_deref()
                .and_then(|url| SharedCounts::new(url, board.clone())),
            board,
            live_within_ms: live_within_ms(s),
        }
    }

    /// True when some worker is alive, recent and has room for a request
    /// (one past `max_requests` serves until its replacement is ready).
    fn worker_available(&self) -> bool {
        let now = monotonic_ms();
        self.board.child_slots().any(|i| {
            let slot = self.board.slot(i);
            slot.role.load(Relaxed) == ROLE_WORKER
                && matches!(slot.state(), SlotState::Ready | SlotState::Recycling)
                && slot.is_live(now, self.live_within_ms)
                && slot.active_connections.load(Relaxed) < slot.max_connections.load(Relaxed)
        })
    }

    async fn admit(&self, limiter: &RateLimiter, kind: &str, key: &str) -> bool {
        match &self.shared {
            Some(shared) => shared.admit(limiter, kind, key).await,
            None => limiter.admit(key),
        }
    }

    fn trusts(&self, peer: Option<IpAddr>) -> bool {
        self.trust_all || peer.is_some_and(|ip| self.trusted.contains(&ip))
    }
}

/// Per-request state.
pub struct Ctx {
    request_id: String,
    peer: Option<IpAddr>,
    /// The client as the workers should see it (after trusted forwarding).
    client: Option<String>,
    tls: bool,
    body_seen: u64,
    /// We answered `Expect: 100-continue` ourselves.
    continued: bool,
    /// The whole response has been handed to the client's connection.
    answered: bool,
    /// An early answer to an HTTP/2 client, held until it can go whole.
    held: Option<Held>,
    _live: Live,
}

struct Live;

impl Live {
    fn new() -> Self {
        IN_FLIGHT.fetch_add(1, Relaxed);
        Live
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Relaxed);
    }
}

/// Whether a request lets its connection stay open (RFC 9112, 9.3):
/// HTTP/1.1 and later unless it says `close`, HTTP/1.0 only when it says
/// `keep-alive`.
fn client_keeps_alive(version: http::Version, connection: Option<&http::HeaderValue>) -> bool {
    let says = |token: &str| {
        connection
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if version >= http::Version::HTTP_11 {
        !says("close")
    } else {
        says("keep-alive")
    }
}

/// Writes a JSON error and marks the connection as not reusable when the
/// request body was not read.
async fn respond(session: &mut Session, ctx: &Ctx, e: &ApiError) -> Result<()> {
    let body = Bytes::from(e.body());
    let mut resp = ResponseHeader::build(e.status, Some(5))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    if let Some(s) = e.retry_after {
        resp.insert_header("retry-after", s.to_string())?;
    }
    session.set_keepalive(None);
    if whole::is_h2(session) {
        whole::send_whole(session, Box::new(resp), body);
        return Ok(());
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// An answer given before the request body was read (a refusal here, or a
/// worker's early 401, 403, 413, ...) must reach a client that is still
/// sending, so the connection or stream is not closed under it at once:
/// a bounded amount of the body is read and thrown away first, which gives
/// the client time to read the answer and stop on its own.
///
/// HTTP/1: unread bytes would make the close a reset (`answer::linger`).
///
/// HTTP/2: dropping the stream makes h2 follow the complete response with
/// RST_STREAM(NO_ERROR), as RFC 9113 §8.1 allows; but a client may take a
/// reset that arrives with the response, while it is still sending, as a
/// failure of the stream and throw away the answer it holds (some curl
/// versions do). A client that stops on its own ends its stream early; h2 resets
/// that one (its Content-Length is not met), which ends the read here, and
/// by then the client has its answer.
async fn linger_if_unread(session: &mut Session) {
    if session.response_written().is_none() || session.is_body_done() {
        return;
    }
    session.set_keepalive(None);
    linger(session).await;
}

#[async_trait]
impl Unread for Session {
    async fn discard(&mut self) -> Option<usize> {
        match self.read_request_body().await {
            Ok(Some(b)) => Some(b.len()),
            _ => None,
        }
    }
}

/// Whether the peer reset the connection.
fn reset(e: &Error) -> bool {
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

#[async_trait]
impl ProxyHttp for FrontEnd {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            request_id: String::new(),
            peer: None,
            client: None,
            tls: false,
            body_seen: 0,
            continued: false,
            answered: false,
            held: None,
            _live: Live::new(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.peer = peer_ip(session);
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.request_id = crate::request_id::of(&session.req_header().headers)
            .unwrap_or_else(crate::request_id::fresh);
        // The idle time replaces pingora's own (unbounded) only where the
        // client keeps the connection at all: an HTTP/1.0 client that did
        // not ask for keep-alive reads the answer to the end of the
        // connection and must get that end at once. A draining front end
        // keeps none.
        let req = session.req_header();
        if !draining() && client_keeps_alive(req.version, req.headers.get(http::header::CONNECTION))
        {
            session.set_keepalive(Some(self.idle_timeout));
        } else {
            session.set_keepalive(None);
        }
        session.set_read_timeout(Some(self.body_timeout));

        let framing = match self.check_framing(session) {
            Ok(f) => f,
            Err(r) => {
                respond(session, ctx, &r.into()).await?;
                return Ok(true);
            }
        };
        let trusted = self.trusts(ctx.peer);
        let forwarded = trusted
            .then(|| session.get_header("x-forwarded-for"))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_string())
            .filter(|v| v.parse::<IpAddr>().is_ok());
        ctx.client = forwarded.or_else(|| ctx.peer.map(|ip| ip.to_string()));
        let client = ctx.client.clone().unwrap_or_default();
        if !self.admit(&self.per_ip, "ip", &client).await {
            let msg = format!("too many requests from {client}; slow down");
            let e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", msg);
            respond(session, ctx, &e.retry_after(1)).await?;
            return Ok(true);
        }
        // The key as the worker will read it (a header, or Basic's password).
        if let Some(key) = crate::auth::presented_key(
            session.get_header("x-api-key").map(|v| v.as_bytes()),
            session.get_header("authorization").map(|v| v.as_bytes()),
        ) {
            // Counted under a digest so no key is kept in memory in clear.
            let id = super::tls::fingerprint(key.as_bytes());
            if !self.admit(&self.per_key, "key", &id).await {
                let e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests with this API key; slow down",
                );
                respond(session, ctx, &e.retry_after(1)).await?;
                return Ok(true);
            }
        }
        if framing.chunked && session.as_http1().is_some() {
            // Parse the first chunk before any worker is contacted, so a
            // garbled chunk size at the start is refused here. The bytes
            // read are kept in pingora's retry buffer and sent upstream
            // first. A bad chunk further in is only caught when it
            // arrives, after the worker got the head.
            session.enable_retry_buffering();
            let expects = session
                .get_header("expect")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            if expects {
                // The client holds its body until told to go on; the worker
                // will not be asked again (the header is dropped upstream).
                session.write_continue_response().await?;
                ctx.continued = true;
            }
            if session.read_request_body().await.is_err() {
                let e = ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "malformed chunked body",
                );
                respond(session, ctx, &e).await?;
                return Ok(true);
            }
        }
        if !self.worker_available() {
            let e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_worker",
                "no worker can take the request right now; retry shortly",
            );
            respond(session, ctx, &e.retry_after(1)).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Marks the connection as kept alive, so the next head's deadline
    /// starts at its first byte (see `head`).
    fn persist_connection_context(
        &self,
        _session: &Session,
        _ctx: &Ctx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        Some(Box::new(KeptAlive))
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.answered && !end_of_stream {
            *body = None;
            return Err(Error::new(ANSWERED_EARLY).into_down());
        }
        if let Some(b) = body {
            ctx.body_seen += b.len() as u64;
            if ctx.body_seen > self.max_body {
                // Cut here: the worker never gets the byte past the limit.
                *body = None;
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    format!("request body over proxy.max_body_bytes ({})", self.max_body),
                );
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let socket = self.socket.to_string_lossy();
        let mut peer = HttpPeer::new_uds(&socket, false, String::new())?;
        // A Unix socket connects at once or not at all; waiting longer
        // than this only hides a dead pool.
        peer.options.connection_timeout = Some(Duration::from_secs(1));
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(self.upstream_idle);
        Ok(Box::new(peer))
    }

    /// Two failures leave a request that no worker acted on, which is then
    /// sent again on a fresh connection, for any method, as long as its
    /// body is still in the retry buffer and nothing of an answer has gone
    /// to the client. Both mean the worker did not get the whole request,
    /// and a worker acts on a request only once it has read it whole
    /// (`worker::unread` reads what a handler left):
    /// - the request could not be written: a pooled connection that a
    ///   worker closed while it sat idle (its keep-alive running out), or
    ///   a worker that died while the request was being sent;
    /// - the worker reset the connection before any answer: the kernel
    ///   resets a Unix socket closed with bytes unread, as when a worker
    ///   dies (a crash, a kill) with the request in its socket.
    ///
    /// Errors on the client's side are never retried; other errors keep
    /// pingora's rule: only idempotent requests on reused connections.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // A failure on the client's side (a bad chunk, a client gone) is
        // never retried: a new attempt could only send a worker the part
        // of the body that was good, and end it.
        let client_side = e.esource() == &pingora_core::ErrorSource::Downstream;
        let intact = !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
            && ctx.held.is_none();
        let idempotent = session.req_header().method.is_idempotent();
        let upstream = e.esource() == &pingora_core::ErrorSource::Upstream;
        let unsent = upstream
            && (*e.etype() == ErrorType::WriteError
                || (*e.etype() == ErrorType::ReadError && reset(&e)));
        if client_side || !intact || !(idempotent || unsent) {
            e.set_retry(false);
        } else if unsent {
            e.set_retry(true);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let peer = ctx.peer.map(|ip| ip.to_string()).unwrap_or_default();
        let trusted = self.trusts(ctx.peer);
        // Appended, as nginx's $proxy_add_x_forwarded_for does; a client's
        // own list is kept only when the client is a trusted proxy.
        let xff = match session
            .get_header("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if trusted => format!("{prev}, {peer}"),
            _ => peer.clone(),
        };
        let proto = match session
            .get_header("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
        {
            Some(p) if trusted && (p == "http" || p == "https") => p.to_string(),
            _ => if ctx.tls { "https" } else { "http" }.to_string(),
        };
        req.insert_header("x-forwarded-for", xff)?;
        req.insert_header("x-forwarded-proto", proto)?;
        req.insert_header("x-real-ip", ctx.client.clone().unwrap_or(peer))?;
        req.insert_header("x-request-id", ctx.request_id.as_str())?;
        if ctx.continued {
            req.remove_header("expect");
        }
        // HTTP/2 clients send :authority instead of Host; workers speak
        // HTTP/1.1 and need Host (RFC 9112 §3.2: an empty one when there
        // is no authority, as from an HTTP/1.0 client that sent none).
        if req.headers.get("host").is_none() {
            let auth = req.uri.authority().map(|a| a.to_string());
            req.insert_header("host", auth.unwrap_or_default())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        // A request that was under way when the stop came.
        if draining() {
            session.set_keepalive(None);
        }
        ctx.held = Held::take(session, resp);
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(held) = ctx.held.as_mut() {
            if !held.gather(body, end_of_stream) {
                return Ok(None);
            }
            if let Some(held) = ctx.held.take() {
                held.send(session);
            }
            ctx.answered = true;
            return Ok(None);
        }
        ctx.answered |= end_of_stream;
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, _ctx: &mut Ctx) {
        linger_if_unread(session).await;
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        *e.etype() == ANSWERED_EARLY
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        use pingora_core::ErrorSource;
        if *e.etype() == ANSWERED_EARLY {
            return FailToProxy {
                error_code: session.response_written().map_or(0, |r| r.status.as_u16()),
                can_reuse_downstream: false,
            };
        }
        let (status, code, message) = match e.etype() {
            ErrorType::HTTPStatus(413) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is over {} bytes", self.max_body),
            ),
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no_worker",
                "no worker accepted the request; retry shortly".to_string(),
            ),
            ErrorType::ReadTimedout if e.esource() == &ErrorSource::Upstream => (
                StatusCode::GATEWAY_TIMEOUT,
                "worker_timeout",
                "the worker did not answer within proxy.read_timeout".to_string(),
            ),
            ErrorType::ReadTimedout => (
                StatusCode::REQUEST_TIMEOUT,
                "client_timeout",
                "the request body did not arrive in time".to_string(),
            ),
            // A chunked body that goes bad after its head (and maybe some
            // chunks) went to a worker. The worker must never take what it
            // got as the whole upload, and it does not: when the client's
            // half fails, pingora drops the worker's half before it writes
            // the last chunk, and a connection that failed is dropped, not
            // pooled. The worker sees its socket close inside a chunked
            // body and its body stream fails. Retrying is ruled out for
            // client-side errors in `error_while_proxy`.
            // `a_bad_chunk_after_the_first_aborts_the_upload_at_the_worker`
            // holds pingora to this.
            t if e.esource() == &ErrorSource::Downstream && MALFORMED_BODY.contains(t) => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                "malformed chunked body; the upload was aborted".to_string(),
            ),
            ErrorType::HTTPStatus(c) => (
                StatusCode::from_u16(*c).unwrap_or(StatusCode::BAD_GATEWAY),
                "proxy_error",
                e.to_string(),
            ),
            _ => match e.esource() {
                ErrorSource::Upstream => (
                    StatusCode::BAD_GATEWAY,
                    "worker_error",
                    "the worker failed while answering".to_string(),
                ),
                ErrorSource::Downstream => (
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request could not be read".to_string(),
                ),
                _ => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "the front end failed".to_string(),
                ),
            },
        };
        let dead = matches!(
            e.etype(),
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
        ) && e.esource() == &ErrorSource::Downstream;
        if status.is_server_error() {
            tracing::warn!(request_id = %ctx.request_id, status = status.as_u16(), error = %e, "request failed in the front end");
        }
        if !dead && session.response_written().is_none() {
            let _ = respond(session, ctx, &ApiError::new(status, code, message)).await;
        }
        FailToProxy {
            error_code: if dead { 0 } else { status.as_u16() },
            can_reuse_downstream: false,
        }
    }
}

impl FrontEnd {
    fn check_framing(&self, session: &Session) -> std::result::Result<limits::Framing, Refusal> {
        let framing = match session.as_http1() {
            Some(h1) => limits::check_head(&h1.get_headers_raw_bytes(), self.limits)?,
            // HTTP/2 frames its own body and h2 has decoded the fields:
            // gunicorn's limits and the size are ours to check.
            None => {
                let req = session.req_header();
                let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
                limits::check_decoded(req.method.as_str(), target, &req.headers, self.limits)?;
                limits::Framing {
                    content_length: session
                        .get_header("content-length")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok()),
                    chunked: false,
                }
            }
        };
        if let Some(n) = framing.content_length {
            if n > self.max_body {
                return Err(Refusal {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    code: "body_too_large",
                    message: format!(
                        "Content-Length {n} is over the limit of {} bytes",
                        self.max_body
                    ),
                });
            }
        }
        Ok(framing)
    }
}

#[cfg(test)]
mod tests {
    use super::client_keeps_alive;
    use http::{HeaderValue, Version};

    #[test]
    fn keep_alive_follows_rfc_9112() {
        let h = |v: &'static str| HeaderValue::from_static(v);
        assert!(client_keeps_alive(Version::HTTP_11, None));
        assert!(!client_keeps_alive(Version::HTTP_11, Some(&h("Close"))));
        assert!(!client_keeps_alive(Version::HTTP_11, Some(&h("te, close"))));
        assert!(!client_keeps_alive(Version::HTTP_10, None));
        assert!(client_keeps_alive(Version::HTTP_10, Some(&h("Keep-Alive"))));
        assert!(!client_keeps_alive(Version::HTTP_10, Some(&h("upgrade"))));
        assert!(client_keeps_alive(Version::HTTP_2, None));
    }
}
