//! Every HTTP/1 request head, read and checked before pingora parses it:
//! one total deadline for the head (`proxy.header_timeout`, answered 408),
//! a share of the front end's budget for heads in progress while it is
//! unfinished (`headbudget`, answered 503 when evicted), and the
//! appliance's JSON error for every head that is refused.
//!
//! Why a wrapper around pingora's `HttpProxy`: pingora reads and parses a
//! head before any `ProxyHttp` hook runs, and answers a head it cannot
//! parse (or a CONNECT) itself, in its own format, where no hook can change
//! the answer; and it bounds each read of a head but not the whole head,
//! so a client trickling bytes could keep a connection for ever. The
//! appliance promises one JSON error format and one deadline for a head,
//! so the head is read here first. (What exactly this relies on in
//! pingora is listed in ARCHITECTURE.md; re-check it on every upgrade.)
//!
//! [`HeadGuard`] is an `HttpServerApp` that owns the `HttpProxy` and stands
//! where pingora would call it: pingora's own connection loop (accept,
//! TLS, ALPN, HTTP/2, keep-alive reuse) hands it each HTTP/1 session before
//! anything is read. It takes the stream out of the unread session, reads
//! up to the blank line under one deadline, checks the head, and gives the
//! bytes back to a new session with `set_pipelined_prefix`, so pingora
//! parses them without another read and everything after (hooks, body,
//! upstream) is pingora's as before. HTTP/2 sessions go through untouched
//! (h2 frames and bounds its own headers; `h2_idle_timeout` bounds the
//! connection).
//!
//! The check is our strict framing check ([`limits::check_head`], for its
//! precise statuses and messages) followed by pingora's own parser, run on
//! the same bytes over an in-memory stream: a head that passes here cannot
//! fail pingora's parse, so no client sees pingora's own refusal, and no
//! second parser of ours can drift from pingora's. The price is that a
//! head is parsed twice.
//!
//! Rejected: patching or forking pingora-proxy (every upgrade would carry
//! the patch); replacing pingora's connection loop with our own (a copy of
//! its h2c, ALPN and keep-alive logic to maintain); a stream wrapper that
//! rewrites pingora's error bytes on the way out (fragile, and it cannot
//! add a deadline).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use http::StatusCode;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora_core::protocols::http::v1::server::HttpSession as SessionV1;
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::answer::{linger, KeptAlive, Unread};
use super::headbudget::{Claim, HeadBudget};
use super::limits::{self, HeaderLimits, Refusal};
use super::proxy::FrontEnd;
use crate::config::Settings;
use crate::scoreboard::Scoreboard;

/// Pingora's own ceiling for a request head, which it does not export:
/// a head over it is refused here with our error, never by pingora.
const PINGORA_MAX_HEAD: usize = 1_048_575;
/// Pingora's own ceiling for header fields, likewise not exported.
const PINGORA_MAX_FIELDS: usize = 256;
/// A head's first buffer, and the least a growth adds; one TCP segment is
/// far less.
const READ_CHUNK: usize = 4096;
/// A head's buffer grows when less than this is left free in it.
const MIN_SPARE: usize = 1024;
/// How long a refusal may take to write to a client that does not read.
const WRITE_GRACE: Duration = Duration::from_secs(2);

/// What a head must satisfy, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct HeadRules {
    pub timeout: Duration,
    pub limits: HeaderLimits,
}

impl HeadRules {
    pub fn new(settings: &Settings) -> Self {
        HeadRules {
            timeout: Duration::from_secs(settings.proxy.header_timeout),
            limits: HeaderLimits::of(&settings.server),
        }
    }

    /// The most a head may take: gunicorn's limits added up (each line
    /// with its CRLF), never over pingora's own ceiling.
    fn max_head(&self) -> usize {
        let l = self.limits;
        if l.request_line == 0 || l.fields == 0 || l.field_size == 0 {
            return PINGORA_MAX_HEAD;
        }
        let sum = (l.request_line + 2)
            .saturating_add(l.fields.saturating_mul(l.field_size + 2))
            .saturating_add(2);
        sum.min(PINGORA_MAX_HEAD)
    }
}

/// How reading a head ended.
pub(crate) enum Head {
    /// A complete head that pingora will accept, with any bytes after it.
    Ready(BytesMut),
    /// Nothing to answer: the client left or an idle keep-alive expired.
    Gone,
    Refused(Refusal),
    /// Evicted to keep heads in progress within `proxy.head_budget_bytes`.
    Evicted,
}

pub struct HeadGuard {
    proxy: Arc<HttpProxy<FrontEnd>>,
    rules: HeadRules,
    budget: Arc<HeadBudget>,
    board: Arc<Scoreboard>,
}

impl HeadGuard {
    pub fn new(proxy: HttpProxy<FrontEnd>, settings: &Settings, board: Arc<Scoreboard>) -> Self {
        let budget = usize::try_from(settings.proxy.head_budget_bytes).unwrap_or(usize::MAX);
        HeadGuard {
            proxy: Arc::new(proxy),
            rules: HeadRules::new(settings),
            budget: HeadBudget::new(budget),
            board,
        }
    }
}

#[async_trait]
impl HttpServerApp for HeadGuard {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let mut h1 = match session {
            // Pipelining is never enabled here; if it were, the session
            // could hold bytes of this head that `into_inner` would drop.
            ServerSession::H1(h1) if !h1.pipelining_enabled() => h1,
            other => return self.proxy.process_new_http(other, shutdown).await,
        };
        let keepalive = h1.get_keepalive_timeout();
        let reuses = h1.get_keepalive_reuses_remaining();
        let carried: Option<Box<dyn Any + Send + Sync>> = h1.take_connection_user_context();
        let kept_alive = carried.as_ref().is_some_and(|c| c.is::<KeptAlive>());
        let mut stream = h1.into_inner();

        // A stopping front end does not drop a connection waiting for its
        // next head at once, as pingora would: that head may be on its
        // way, and the client would see its request fail. It is served
        // (answered `Connection: close`) if its first byte comes within
        // `DRAIN_GRACE`; only then is a silent connection closed.
        let waiting = Waiting {
            kept_alive,
            keepalive,
        };
        let head = read_head(&mut stream, &self.rules, &self.budget, waiting, shutdown).await;
        match head {
            Head::Ready(bytes) => {
                let mut session = ServerSession::new_http1(stream);
                session.set_keepalive(if *shutdown.borrow() { None } else { keepalive });
                session.set_keepalive_reuses_remaining(reuses);
                session.set_connection_user_context(carried);
                session.set_pipelined_prefix(bytes);
                self.proxy.process_new_http(session, shutdown).await
            }
            Head::Gone => None,
            Head::Refused(r) => {
                tracing::debug!(status = r.status.as_u16(), code = r.code, reason = %r.message, "request head refused");
                answer(&mut stream, &r).await;
                None
            }
            Head::Evicted => {
                self.board
                    .header()
                    .heads_evicted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(
                    "request head evicted: heads in progress over proxy.head_budget_bytes"
                );
                answer(&mut stream, &eviction()).await;
                None
            }
        }
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.proxy.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.proxy.server_options()
    }

    async fn http_cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

/// How long a stopping front end still waits for the next request on a
/// connection it accepted: a client that sent one just before the stop
/// (or just after its last answer, which said keep-alive) is still served.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Resolves `DRAIN_GRACE` after the front end began to stop.
async fn drained(shutdown: &ShutdownWatch) {
    let mut w = shutdown.clone();
    if w.wait_for(|stop| *stop).await.is_err() {
        // The sender is gone without a stop: nothing will ever stop us.
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(DRAIN_GRACE).await;
}

/// Whether a connection waits for its next head, and for how long.
pub(crate) struct Waiting {
    pub kept_alive: bool,
    pub keepalive: Option<u64>,
}

/// Reads one head under the deadline. A fresh connection's clock starts
/// now (a client that connects and says nothing is as slow as one that
/// trickles); a kept-alive one first waits its keep-alive time for a byte,
/// silently, and the clock starts at that byte. A head that does not
/// arrive whole in its first read is charged to `budget` for its buffer
/// until it is complete, and gives way if the budget evicts it.
pub(crate) async fn read_head(
    stream: &mut Stream,
    rules: &HeadRules,
    budget: &Arc<HeadBudget>,
    waiting: Waiting,
    shutdown: &ShutdownWatch,
) -> Head {
    let Waiting {
        kept_alive,
        keepalive,
    } = waiting;
    // A plain Vec, grown by hand: `BytesMut` doubles, so a head would hold
    // up to twice its size.
    let mut buf = Vec::with_capacity(READ_CHUNK);
    if kept_alive {
        let limit = match keepalive {
            // Some(0): no keep-alive limit, as pingora reads it.
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => Some(rules.timeout),
        };
        let first = read_some(stream, &mut buf);
        let waited = async {
            match limit {
                Some(limit) => tokio::time::timeout(limit, first).await.ok(),
                None => Some(first.await),
            }
        };
        // Bytes already come win: the select is biased.
        let n = tokio::select! {
            biased;
            n = waited => match n {
                Some(n) => n,
                None => return Head::Gone,
            },
            _ = drained(shutdown) => return Head::Gone,
        };
        if !matches!(n, Ok(n) if n > 0) {
            return Head::Gone;
        }
    }
    let started = Instant::now();
    let deadline = started + rules.timeout;
    let max_head = rules.max_head();
    let mut scan = Scan::default();
    let mut claim: Option<Claim> = None;
    loop {
        if let Some(end) = scan.advance(&buf) {
            return check(
                BytesMut::from(bytes::Bytes::from(buf)),
                scan.lead,
                end,
                rules.limits,
            )
            .await;
        }
        if let Some(r) = scan.too_large(&buf, rules.limits, max_head) {
            return Head::Refused(r);
        }
        if !buf.is_empty() && make_room(&mut buf, &mut claim, budget, started, max_head).is_err() {
            return Head::Evicted;
        }
        // A stopping front end waits `DRAIN_GRACE` for a first byte, and
        // never cuts a head that has begun.
        let waiting = buf.is_empty();
        let read = tokio::time::timeout_at(deadline, read_some(stream, &mut buf));
        let read = tokio::select! {
            biased;
            r = read => r,
            _ = drained(shutdown), if waiting => return Head::Gone,
            _ = evicted(&claim) => return Head::Evicted,
        };
        match read {
            Err(_) => {
                return Head::Refused(Refusal {
                    status: StatusCode::REQUEST_TIMEOUT,
                    code: "header_timeout",
                    message: format!(
                        "the request head did not arrive within proxy.header_timeout ({} s)",
                        rules.timeout.as_secs()
                    ),
                })
            }
            // A client that leaves mid-head is owed nothing, as in pingora.
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Gone,
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads into the room left in `buf` (never growing it: `make_room` does,
/// under the budget).
async fn read_some(stream: &mut Stream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    if buf.capacity() == buf.len() {
        buf.reserve_exact(MIN_SPARE);
    }
    stream.read_buf(buf).await
}

/// An unfinished head is in progress: it is charged for its buffer (from
/// now on, if this is its first turn here), and its buffer grows, by half
/// at a time, once little room is left, never past what the limits allow.
fn make_room(
    buf: &mut Vec<u8>,
    claim: &mut Option<Claim>,
    budget: &Arc<HeadBudget>,
    started: Instant,
    max_head: usize,
) -> Result<(), super::headbudget::Evicted> {
    let now = Instant::now();
    let first = claim.is_none();
    let c = claim.get_or_insert_with(|| budget.claim(started));
    c.received(buf.len());
    let len = buf.len();
    if buf.capacity() - len >= MIN_SPARE {
        if first {
            c.hold(buf.capacity(), now)?;
        }
        return Ok(());
    }
    // `too_large` refused any head over `max_head`, so this adds room.
    let grown = (len + len / 2)
        .max(len + READ_CHUNK)
        .min(max_head + 1)
        .max(len + 1);
    c.hold(grown, now)?;
    buf.reserve_exact(grown - len);
    Ok(())
}

/// Resolves when the head holding `claim` is evicted (never without one).
async fn evicted(claim: &Option<Claim>) {
    match claim {
        Some(c) => c.evicted().await,
        None => std::future::pending().await,
    }
}

/// The answer to an evicted head.
fn eviction() -> Refusal {
    Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "head_budget_exceeded",
        message: "too many request heads are in progress (proxy.head_budget_bytes) \
                  and this one was among the slowest; send the head whole and retry"
            .into(),
    }
}

/// Incremental search for the end of a head, so a head trickled a byte at
/// a time costs linear time, not a re-parse per byte.
#[derive(Default)]
pub(crate) struct Scan {
    /// Empty lines before the request line (RFC 9112 §2.2 lets a server
    /// skip them; pingora's parser does).
    lead: usize,
    lead_done: bool,
    /// Where the request line ends, once seen.
    first_line_end: Option<usize>,
    /// Bytes already looked at.
    seen: usize,
}

impl Scan {
    /// The end of the head (just past its blank line), if it has arrived.
    pub(crate) fn advance(&mut self, buf: &[u8]) -> Option<usize> {
        while !self.lead_done && self.lead < buf.len() {
            match &buf[self.lead..] {
                [b'\r', b'\n', ..] => self.lead += 2,
                [b'\n', ..] => self.lead += 1,
                // A lone CR may be the start of a CRLF: wait for more.
                [b'\r'] => return None,
                _ => self.lead_done = true,
            }
        }
        if !self.lead_done {
            return None;
        }
        let start = self.seen.max(self.lead);
        for i in start..buf.len() {
            if buf[i] != b'\n' {
                continue;
            }
            if self.first_line_end.is_none() {
                self.first_line_end = Some(i);
            }
            // A line end right after another one: LF LF or LF CR LF (the
            // bare-LF forms are refused later, by the framing check).
            let blank = (i > self.lead && buf[i - 1] == b'\n')
                || (i >= self.lead + 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n');
            if blank {
                self.seen = i + 1;
                return Some(i + 1);
            }
        }
        self.seen = buf.len();
        None
    }

    /// Refuses an unfinished head that is already over a limit, so a
    /// client cannot make us hold more than the limits allow.
    fn too_large(&self, buf: &[u8], limits: HeaderLimits, max_head: usize) -> Option<Refusal> {
        let line_so_far = buf.len().saturating_sub(self.lead);
        // +1: the request line's CR may be in the buffer without its LF.
        if self.first_line_end.is_none()
            && limits.request_line > 0
            && line_so_far > limits.request_line + 1
        {
            return Some(Refusal {
                status: StatusCode::URI_TOO_LONG,
                code: "request_line_too_long",
                message: format!(
                    "request line is over {} bytes (server.limit_request_line)",
                    limits.request_line
                ),
            });
        }
        (buf.len() > max_head).then(|| Refusal {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code: "request_head_too_large",
            message: format!("request head is over {max_head} bytes"),
        })
    }
}

/// Our framing rules, then pingora's parser on the same bytes.
async fn check(buf: BytesMut, lead: usize, end: usize, limits: HeaderLimits) -> Head {
    if let Err(r) = limits::check_head(&buf[lead..end], limits) {
        return Head::Refused(r);
    }
    match pingora_parse(&buf[..end]).await {
        Ok(()) => Head::Ready(buf),
        Err(r) => Head::Refused(r),
    }
}

fn bad(message: String) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request",
        message,
    }
}

/// Runs pingora's `read_request` over an in-memory stream holding `head`,
/// plus the refusals pingora-proxy makes right after it (CONNECT).
async fn pingora_parse(head: &[u8]) -> Result<(), Refusal> {
    let mut probe = SessionV1::new(Box::new(std::io::Cursor::new(Vec::<u8>::new())));
    probe.set_pipelined_prefix(BytesMut::from(head));
    match probe.read_request().await {
        Ok(Some(_)) => {}
        // The head ended at a blank line but pingora wanted more: refuse
        // rather than guess.
        Ok(None) => return Err(bad("the request head is incomplete".into())),
        Err(e) => return Err(bad(describe(&e))),
    }
    let req = probe.req_header();
    if req.headers.len() > PINGORA_MAX_FIELDS {
        return Err(Refusal {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code: "too_many_header_fields",
            message: format!("more than {PINGORA_MAX_FIELDS} header fields"),
        });
    }
    if req.method == http::Method::CONNECT {
        return Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            message: "CONNECT is not served here".into(),
        });
    }
    Ok(())
}

/// Pingora's reason, without the raw head it attaches (`buf: ...`): the
/// client sent those bytes and needs no copy of them.
fn describe(e: &pingora_core::Error) -> String {
    let context = e
        .context
        .as_ref()
        .map(|c| c.as_str().to_string())
        .filter(|c| !c.starts_with("buf:"));
    let cause = e.cause.as_ref().map(|c| c.to_string());
    match (context, cause) {
        (Some(c), Some(why)) => format!("malformed request head: {c}: {why}"),
        (Some(c), None) => format!("malformed request head: {c}"),
        (None, Some(why)) => format!("malformed request head: {why}"),
        (None, None) => "malformed request head".into(),
    }
}

/// Writes the refusal as a whole HTTP/1.1 response on the raw stream
/// (there is no pingora session for a head that never parsed), then closes
/// after a short linger.
pub(super) async fn answer(stream: &mut Stream, r: &Refusal) {
    let body = crate::api_error::body(r.code, &r.message);
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT");
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-request-id: {}\r\ndate: {date}\r\nconnection: close\r\n\r\n",
        r.status.as_u16(),
        r.status.canonical_reason().unwrap_or(""),
        body.len(),
        crate::request_id::fresh(),
    );
    let written = tokio::time::timeout(WRITE_GRACE, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let mut raw = Raw {
        stream,
        sink: vec![0u8; 8192],
    };
    linger(&mut raw).await;
}

/// A connection pingora has not wrapped in a session.
struct Raw<'a> {
    stream: &'a mut Stream,
    sink: Vec<u8>,
}

#[async_trait]
impl Unread for Raw<'_> {
    async fn discard(&mut self) -> Option<usize> {
        match self.stream.read(&mut self.sink).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(parts: &[&[u8]]) -> Option<usize> {
        let mut scan = Scan::default();
        let mut buf = Vec::new();
        for p in parts {
            buf.extend_from_slice(p);
            if let Some(end) = scan.advance(&buf) {
                return Some(end);
            }
        }
        None
    }

    #[test]
    fn the_end_of_a_head_is_found_however_it_is_split() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        let bytes: Vec<&[u8]> = raw.chunks(1).collect();
        assert_eq!(end_of(&bytes), Some(raw.len() - 4));
        assert_eq!(end_of(&[raw]), Some(raw.len() - 4));
        // Empty lines before the request line are skipped, not an end.
        assert_eq!(end_of(&[b"\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"]), Some(22));
        assert_eq!(end_of(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]), None);
        // Bare LF ends it too (and the framing check then refuses it).
        assert_eq!(end_of(&[b"GET / HTTP/1.1\n\n"]), Some(16));
    }

    #[tokio::test]
    async fn pingora_parse_refuses_what_pingora_would_and_says_why() {
        pingora_parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let r = pingora_parse(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            .await
            .unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.message.contains("Host"), "{}", r.message);
        let r = pingora_parse(b"G\x01T / HTTP/1.1\r\n\r\n")
            .await
            .unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(!r.message.contains("buf:"), "{}", r.message);
        let r = pingora_parse(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n")
            .await
            .unwrap_err();
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn an_unfinished_head_over_the_limits_is_refused() {
        let limits = HeaderLimits {
            request_line: 10,
            fields: 2,
            field_size: 10,
        };
        let mut scan = Scan::default();
        let line = b"GET /aaaaaaaaaaaaaaaa";
        assert!(scan.advance(line).is_none());
        let r = scan.too_large(line, limits, 100).unwrap();
        assert_eq!(r.status, StatusCode::URI_TOO_LONG);
        let mut scan = Scan::default();
        let many = b"GET / HTTP/1.1\r\nX: 1\r\nX: 1\r\nX: 1\r\nX: 1\r\n";
        assert!(scan.advance(many).is_none());
        let r = scan.too_large(many, limits, 30).unwrap();
        assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
}
