//! An answer given to an HTTP/2 client before its request body is in
//! (a worker's early 401, 403, 413, 415, or the front end's own 413, 429,
//! 503) goes out as HEADERS and DATA queued together, never HEADERS alone.
//!
//! Why: a client that gets an answer while it is still uploading may stop
//! at once and end its stream short of its `Content-Length` (curl does, on
//! the answer's HEADERS). h2 takes that as a malformed request, resets the
//! stream with PROTOCOL_ERROR and drops whatever it still had queued for
//! it; when the answer's DATA was not out yet, the client is left with a
//! status and no body, and reports a framing error. Pingora writes a
//! proxied answer's head as soon as the worker's head is read and its body
//! once that is read too, with time between for the client to react; and
//! its own writes are async calls that may yield between head and body.
//!
//! So the head of such an answer is held back (pingora is handed an
//! informational head, which its HTTP/2 session does not send) and its
//! body gathered, and once the body is whole both are queued on the h2
//! stream in one synchronous step. The connection's task then writes them
//! out together, before it can read the client's end of stream.
//!
//! Only answers with a small `Content-Length` body are held (every JSON
//! error is), so what is held per stream stays bounded, and only while the
//! request body is still coming: otherwise there is no race to close.

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use pingora_core::protocols::http::ServerSession;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// The largest answer body held back; larger answers go as pingora sends
/// them (no early answer is this large).
pub const HOLD_MAX: usize = 64 << 10;

/// An answer whose head is held until its body is whole.
pub struct Held {
    header: Box<ResponseHeader>,
    body: BytesMut,
    expected: usize,
}

/// Whether `resp` is an answer to hold for `session`: HTTP/2, the request
/// body not all in, and a body of a known, small length to come.
fn should_hold(session: &Session, resp: &ResponseHeader) -> Option<usize> {
    if !is_h2(session) {
        return None;
    }
    if session.req_header().method == Method::HEAD
        || resp.status.is_informational()
        || matches!(
            resp.status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
        )
    {
        return None;
    }
    let len: usize = resp
        .headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (len > 0 && len <= HOLD_MAX).then_some(len)
}

impl Held {
    /// Takes `resp` aside when it must go out whole (see the module's
    /// comment) and leaves pingora an informational head in its place.
    pub fn take(session: &mut Session, resp: &mut ResponseHeader) -> Option<Held> {
        if session.is_body_done() {
            return None;
        }
        let expected = should_hold(session, resp)?;
        // Never sent: pingora's HTTP/2 session drops informational heads.
        let placeholder = ResponseHeader::build(StatusCode::EARLY_HINTS, Some(0)).ok()?;
        let header = Box::new(std::mem::replace(resp, placeholder));
        Some(Held {
            header,
            body: BytesMut::with_capacity(expected),
            expected,
        })
    }

    /// Gathers a piece of the answer's body (taking it from pingora);
    /// true once the body is whole.
    pub fn gather(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) -> bool {
        if let Some(b) = body.take() {
            let room = HOLD_MAX.saturating_sub(self.body.len());
            self.body.extend_from_slice(&b[..b.len().min(room)]);
        }
        end_of_stream || self.body.len() >= self.expected
    }

    /// Queues the head and the body on the stream, in one step.
    pub fn send(self, session: &mut Session) {
        send_whole(session, self.header, self.body.freeze());
    }
}

/// Whether the client speaks HTTP/2 on this session.
pub fn is_h2(session: &Session) -> bool {
    matches!(session.downstream_session.as_ref(), ServerSession::H2(_))
}

/// Queues `header` and `body` (ending the stream) on an HTTP/2 session
/// with nothing in between that could yield; does nothing on any other.
/// A stream the client already reset takes nothing, which is no error of
/// ours: the client left.
pub fn send_whole(session: &mut Session, header: Box<ResponseHeader>, body: Bytes) {
    let ServerSession::H2(h2) = session.downstream_session.as_mut() else {
        return;
    };
    if h2.write_response_header(header, body.is_empty()).is_err() || body.is_empty() {
        return;
    }
    // Taken from the session for the synchronous send; pingora's later
    // end of the response then finds nothing left to end.
    if let Some(mut writer) = h2.take_response_body_writer() {
        let _ = writer.send_data(body, true);
    }
}
