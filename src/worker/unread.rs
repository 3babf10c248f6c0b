//! What is left of a request body the handler did not read. An answer
//! given before the body is read (a bad key, a bad parameter, an id that
//! is not one) must not leave the body's bytes in the connection: hyper
//! then closes it under the front end, which may still be sending the
//! body or may reuse it, and the client gets a 502 for a 4xx. So a body
//! the handler dropped unread comes back here, and is read to its end
//! before the answer goes out; one too large or too slow to read is cut
//! and the answer says `Connection: close`, so nothing reuses the
//! connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Response};
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// Read at most this much of a body nobody wanted before giving up on
/// the connection instead.
const DRAIN_BYTES: usize = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Where a request body dropped unread is put back.
#[derive(Clone, Default)]
pub struct Leftover(Arc<parking_lot::Mutex<Option<Incoming>>>);

impl Leftover {
    /// The body as handlers get it, returning here if dropped unread.
    pub fn wrap(&self, body: Incoming) -> Body {
        Body::new(Tracked {
            inner: Some(body),
            leftover: self.clone(),
        })
    }

    /// Reads what the handler left of the body, or marks the answer as
    /// the connection's last when that cannot be done quickly.
    pub async fn settle(&self, resp: &mut Response<Body>) {
        let Some(mut body) = self.0.lock().take() else {
            return;
        };
        let drained = async {
            let mut seen = 0usize;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return false };
                seen += frame.data_ref().map_or(0, Bytes::len);
                if seen > DRAIN_BYTES {
                    return false;
                }
            }
            true
        };
        if !tokio::time::timeout(DRAIN_TIME, drained)
            .await
            .unwrap_or(false)
        {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

struct Tracked {
    inner: Option<Incoming>,
    leftover: Leftover,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            // Read to its end: nothing to put back.
            self.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(body) = self.inner.take().filter(|b| !b.is_end_stream()) {
            *self.leftover.0.lock() = Some(body);
        }
    }
}
