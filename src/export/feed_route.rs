//! `GET /v1/export/analyses?cursor=`: the change feed as NDJSON, streamed a
//! chunk at a time. Each line is one analysis as it is now, with the
//! cursor that resumes just after it; the last line carries only the
//! cursor to resume from and the count. A response that ends without that
//! line was cut short: resume from the last cursor seen.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};

use super::cursor::FeedPosition;
use super::feed::{closing_line, Change, Feed};
use super::params::{bad, Params};
use crate::analyses::db_error;
use crate::api_error::ApiError;
use crate::auth::{allow, Caller, Visibility};
use crate::worker::state::AppState;

/// At most this many analyses in one response when a client asks for a
/// bound; without one, the feed runs to its horizon.
const MAX_LIMIT: usize = 100_000_000;

pub async fn export(
    State(app): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(allow::READ)?;
    let params = Params::parse(raw.as_deref(), &["cursor", "limit"])?;
    let from = match params.get("cursor") {
        Some(c) => FeedPosition::decode(c).map_err(|e| bad("invalid_cursor", e.to_string()))?,
        None => FeedPosition::START,
    };
    let limit = match params.get("limit") {
        Some(_) => params.limit(MAX_LIMIT, MAX_LIMIT)? as u64,
        None => u64::MAX,
    };
    let feed = Feed::start(app.db.clone(), Visibility::of(&caller), from, limit)
        .await
        .map_err(db_error)?;
    // The first chunk is read before the answer starts, so an unreachable
    // database is a 503, not a 200 cut short.
    let mut feed = feed;
    let first = feed.next_chunk().await.map_err(db_error)?;
    let mut count = 0u64;
    let first = render(&first, &mut count, feed.is_done().then(|| feed.position()));
    let rest = futures_util::stream::unfold((feed, count), |(mut feed, mut count)| async move {
        if feed.is_done() {
            return None;
        }
        match feed.next_chunk().await {
            Ok(chunk) => {
                let end = feed.is_done().then(|| feed.position());
                let bytes = render(&chunk, &mut count, end);
                Some((Ok::<_, std::io::Error>(bytes), (feed, count)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "the change feed stopped mid-response");
                // Ending the body with an error cuts the response short:
                // no final line, so the client resumes.
                Some((Err(std::io::Error::other(e)), (feed_done(feed), count)))
            }
        }
    });
    let body = futures_util::stream::once(async move { Ok(first) });
    let body = futures_util::StreamExt::chain(body, rest);
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

fn feed_done(mut feed: Feed) -> Feed {
    feed.stop();
    feed
}

/// Lines for `chunk`, and the closing line when `end` is the position to
/// resume from.
fn render(chunk: &[Change], count: &mut u64, end: Option<FeedPosition>) -> Bytes {
    let mut out = BytesMut::with_capacity(chunk.len() * 768 + 128).writer();
    // Serialising a Value into memory cannot fail.
    for change in chunk {
        let _ = serde_json::to_writer(&mut out, &change.line());
        out.get_mut().put_u8(b'\n');
    }
    *count += chunk.len() as u64;
    if let Some(at) = end {
        let _ = serde_json::to_writer(&mut out, &closing_line(at, *count));
        out.get_mut().put_u8(b'\n');
    }
    out.into_inner().freeze()
}
