//! `GET /v1/samples/{sha256}/content[?format=zip|raw]`: a sample's bytes,
//! streamed from the sample store in chunks (never buffered whole; from
//! whichever node's disk or bucket holds it), as an attachment the browser
//! must not sniff or render. Raw for the bridge, or inside a zip encrypted
//! with the password `infected` for analysts.
//!
//! Who may: any role, for a sample with at least one analysis the caller
//! may read (`auth::Visibility`); otherwise 404, the answer a missing
//! sample gets, so a key learns nothing about samples it cannot read.
//! Every download is an audit row on that analysis, committed before the
//! first byte goes out. A sample whose bytes were purged
//! (`crate::retention`) answers 410.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::json;
use uuid::Uuid;

use super::zip::{Encoder, PASSWORD};
use crate::analyses::db_error;
use crate::analyses::status::{audit, KeyRequest};
use crate::api_error::ApiError;
use crate::auth::{allow, Caller, Role, Visibility};
use crate::storage::{Object, StoreError};
use crate::worker::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Raw,
    Zip,
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Zip => "zip",
        }
    }
}

pub async fn sample_content(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(sha256): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(allow::READ)?;
    sample_name(&sha256)?;
    let format = parse_format(query.as_deref())?;
    let analysis = permitted(&app, &caller, &sha256, format)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no sample {sha256}")))?;
    if let Some(purged) = purged_at(&app, &sha256).await? {
        return Err(ApiError::new(
            StatusCode::GONE,
            "content_purged",
            format!(
                "the bytes of sample {sha256} were deleted{} (retention); its record, \
                 analyses and audit trail remain, and submitting the bytes again stores them again",
                purged
                    .map(|t| format!(" at {}", t.to_rfc3339()))
                    .unwrap_or_default()
            ),
        ));
    }

    // The location comes from the validated hash, as intake stored it and
    // the runner reads it, never from the database row: nothing but the
    // store's own samples can be named.
    let object = app.store.open(&sha256).await.map_err(unreadable)?;
    let zip = match format {
        Format::Raw => None,
        Format::Zip => {
            // The zip's head carries the CRC: a first pass over the bytes.
            let first = app.store.open(&sha256).await.map_err(unreadable)?;
            let crc = crc_of(first).await?;
            Some(Encoder::new(
                &sha256,
                object.size,
                crc,
                object.modified,
                PASSWORD,
            ))
        }
    };

    // Recorded before anything is sent: a download the log cannot hold
    // does not happen.
    let by = KeyRequest::new(&caller, &headers);
    let mut conn = app.db.acquire().await.map_err(db_error)?;
    audit(
        &mut conn,
        analysis,
        &by.actor(),
        "sample_downloaded",
        json!({ "sha256": sha256, "format": format.as_str(), "key": caller.name }),
    )
    .await
    .map_err(audit_error)?;
    drop(conn);

    let (body, length, content_type, extension) = match zip {
        None => (
            Body::from_stream(object.body),
            object.size,
            "application/octet-stream",
            "bin",
        ),
        Some(enc) => {
            let length = enc.archive_len();
            (
                Body::from_stream(zip_stream(object.body, enc)),
                length,
                "application/zip",
                "zip",
            )
        }
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{sha256}.{extension}\""))
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// A sample's name in a content route's path: its sha256 as the
/// store names it (64 lowercase hex digits), else 400
/// `invalid_sha256`.
pub fn sample_name(raw: &str) -> Result<(), ApiError> {
    if crate::storage::is_sha256(raw) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_sha256",
        "the sample is named by its sha256: 64 lowercase hex digits",
    ))
}

/// `format=raw` (the default) or `format=zip`; other parameters are
/// ignored, a `format` this route does not make is refused.
fn parse_format(query: Option<&str>) -> Result<Format, ApiError> {
    let mut format = None;
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "format" {
            continue;
        }
        let this = match value {
            "raw" => Format::Raw,
            "zip" => Format::Zip,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_format",
                    "format is zip (password \"infected\") or raw",
                ))
            }
        };
        if format.is_some_and(|f| f != this) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_format",
                "format is given twice, differently",
            ));
        }
        format = Some(this);
    }
    Ok(format.unwrap_or(Format::Raw))
}

/// The analysis the download is recorded on, if the caller may have the
/// sample: the newest analysis of it the caller may read.
///
/// And one exception, for the bridge: a bridge key may have the raw bytes
/// of a sample that has a detonation or analysis job waiting or running,
/// whatever its TLP, because detonating TLP:RED samples is the bridge's
/// job too. It does not open the rest of the archive: once its jobs are
/// done, a TLP:RED sample is again only its submitter's and admin's, and
/// a stolen bridge key can fetch nothing a claim would not hand it anyway.
async fn permitted(
    app: &AppState,
    caller: &Caller,
    sha256: &str,
    format: Format,
) -> Result<Option<Uuid>, ApiError> {
    let vis = Visibility::of(caller);
    let visible: Option<Uuid> = sqlx::query_scalar(&format!(
        "SELECT a.id FROM analyses a WHERE a.sample_sha256 = $1 AND {} \
         ORDER BY a.created_at DESC, a.id DESC LIMIT 1",
        vis.sql("a", 2)
    ))
    .bind(sha256)
    .bind(vis.key_id())
    .fetch_optional(&app.db)
    .await
    .map_err(db_error)?;
    if visible.is_some() || caller.role != Role::Bridge || format != Format::Raw {
        return Ok(visible);
    }
    sqlx::query_scalar(
        "SELECT a.id FROM analyses a JOIN jobs j ON j.analysis_id = a.id \
         WHERE a.sample_sha256 = $1 AND j.kind <> 'webhook' \
           AND j.state IN ('available', 'running') \
         ORDER BY a.created_at DESC, a.id DESC LIMIT 1",
    )
    .bind(sha256)
    .fetch_optional(&app.db)
    .await
    .map_err(db_error)
}

/// `Some(when)` for a sample whose bytes were purged (`crate::retention`).
async fn purged_at(
    app: &AppState,
    sha256: &str,
) -> Result<Option<Option<DateTime<Utc>>>, ApiError> {
    let row: Option<(bool, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT content_purged, purged_at FROM samples WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&app.db)
            .await
            .map_err(db_error)?;
    Ok(row.and_then(|(purged, at)| purged.then_some(at)))
}

/// Whatever kept the audit row out, the download waits for it: 503, to
/// be retried, with the database's own words only in the log.
fn audit_error(e: sqlx::Error) -> ApiError {
    if crate::store::is_unavailable(&e) {
        return db_error(e);
    }
    tracing::error!(error = %e, "a download's audit row was not written; nothing sent");
    crate::api_error::unavailable("the audit log", "the row could not be written")
}

/// A recorded sample the store cannot hand over: a store that is away
/// answers 503 (retry later), anything else 500; the store's words go to
/// the log only.
fn unreadable(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(_) => {
            tracing::warn!(error = %e, "a sample could not be read: the sample store is away");
            crate::api_error::unavailable("the sample store", "the sample cannot be read now")
        }
        other => {
            tracing::error!(error = %other, "sample recorded but not readable from the store");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "sample_unreadable",
                "the sample is recorded but cannot be read from the store",
            )
        }
    }
}

/// The CRC-32 of a whole object, read as it streams.
async fn crc_of(object: Object) -> Result<u32, ApiError> {
    let mut hasher = crc32fast::Hasher::new();
    let mut body = object.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            unreadable(match e.kind() {
                std::io::ErrorKind::InvalidData => StoreError::Io(e),
                _ => StoreError::Unavailable(e.to_string()),
            })
        })?;
        hasher.update(&chunk);
    }
    Ok(hasher.finalize())
}

struct ZipState {
    body: BoxStream<'static, std::io::Result<Bytes>>,
    enc: Encoder,
    crc: crc32fast::Hasher,
    head_sent: bool,
}

/// The archive: its head, the encrypted sample, its tail. The bytes are
/// checked against the CRC the head promised as they go: a sample that
/// changed since fails the stream rather than ending in a tail that
/// readers would take for a good archive. A body that ends early fails
/// the stream (the store's streams do), which cuts the connection: the
/// client sees a body short of its Content-Length, never one that looks
/// whole.
fn zip_stream(
    body: BoxStream<'static, std::io::Result<Bytes>>,
    enc: Encoder,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    let state = ZipState {
        body,
        enc,
        crc: crc32fast::Hasher::new(),
        head_sent: false,
    };
    futures_util::stream::unfold(Some(state), |state| async move {
        let mut s = state?;
        if !s.head_sent {
            s.head_sent = true;
            return Some((Ok(Bytes::from(s.enc.head())), Some(s)));
        }
        match s.body.next().await {
            None => {
                if s.crc.finalize() != s.enc.crc() {
                    tracing::error!("a stored sample changed while it was sent; download cut");
                    let e = std::io::Error::other("the sample changed while it was sent");
                    return Some((Err(e), None));
                }
                Some((Ok(Bytes::from(s.enc.tail())), None))
            }
            Some(Ok(c)) => {
                s.crc.update(&c);
                let mut c = BytesMut::from(c);
                s.enc.data(&mut c);
                Some((Ok(c.freeze()), Some(s)))
            }
            Some(Err(e)) => Some((Err(e), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_unknown_ones_are_refused() {
        assert_eq!(parse_format(None).unwrap(), Format::Raw);
        assert_eq!(parse_format(Some("format=zip")).unwrap(), Format::Zip);
        assert_eq!(parse_format(Some("x=1&format=raw")).unwrap(), Format::Raw);
        assert_eq!(
            parse_format(Some("format=zip&format=zip")).unwrap(),
            Format::Zip
        );
        for bad in ["format=rar", "format=", "format", "format=zip&format=raw"] {
            let e = parse_format(Some(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
