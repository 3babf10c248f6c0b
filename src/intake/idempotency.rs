//! Idempotent submissions (the IETF httpapi `Idempotency-Key` draft): the
//! header's checks, what a key was first used for (`Prior`), the answer a
//! retry gets, and the pruning of keys past their time. The key is scoped
//! to the API key that sent it, so one client can neither see nor block
//! another's. The record itself is written by the submission's own
//! statement (`record::SUBMISSIONS`), where a unique index decides which
//! of several concurrent tries is the first.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::api_error::ApiError;

pub const HEADER: &str = "idempotency-key";

/// The longest key accepted: enough for any UUID or ULID with a prefix,
/// and a bound on what a client stores per submission.
pub const MAX_LEN: usize = 255;

/// How long a key is remembered: the draft's "at least 24 hours".
pub const KEEP: Duration = Duration::from_secs(24 * 3600);

/// Keys deleted per prune statement: a prune never holds many row locks.
const PRUNE_BATCH: i64 = 1000;

/// The submission a key was first used for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prior {
    pub analysis_id: Uuid,
    /// The sha256 of the bytes first sent with the key.
    pub sha256: String,
    /// The 202 body given then.
    pub response: Value,
}

/// The request's key, if it has one: one header, 1 to `MAX_LEN` printable
/// ASCII characters (the draft's key is a quoted string; its quotes are
/// part of the key here, which only needs to be the same on every try).
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = |why: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            format!("Idempotency-Key: {why}"),
        )
    };
    if values.next().is_some() {
        return Err(bad("given more than once"));
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(bad("empty"));
    }
    if bytes.len() > MAX_LEN {
        return Err(bad(&format!("longer than {MAX_LEN} characters")));
    }
    if !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(bad("only printable ASCII characters are allowed"));
    }
    // Checked above: every byte is ASCII.
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// What the key was first used for, if it was.
pub async fn lookup(db: &PgPool, key_id: i64, key: &str) -> Result<Option<Prior>, sqlx::Error> {
    let row: Option<(Uuid, String, sqlx::types::Json<Value>)> = sqlx::query_as(
        "SELECT analysis_id, request_sha256, response FROM idempotency_keys
          WHERE api_key_id = $1 AND key = $2",
    )
    .bind(key_id)
    .bind(key)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(analysis_id, sha256, response)| Prior {
        analysis_id,
        sha256,
        response: response.0,
    }))
}

/// The answer to a try whose key was used before: the first answer again
/// for the same bytes, a refusal for other bytes.
pub fn replay(prior: Prior, sha256: &str) -> Result<Response, ApiError> {
    if prior.sha256 != sha256 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            format!(
                "this Idempotency-Key was used for other bytes (sha256 {}); \
                 use a new key for a new sample",
                prior.sha256
            ),
        ));
    }
    tracing::info!(analysis_id = %prior.analysis_id, sha256 = %sha256, "a retried submission got its first answer");
    Ok((StatusCode::ACCEPTED, axum::Json(prior.response)).into_response())
}

/// Deletes the keys older than `keep`, in small batches; returns how many.
pub async fn prune(db: &PgPool, keep: Duration) -> Result<u64, sqlx::Error> {
    let mut pruned = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (api_key_id, key) IN (
                 SELECT api_key_id, key FROM idempotency_keys
                  WHERE created_at < now() - make_interval(secs => $1)
                  ORDER BY created_at LIMIT $2
                    FOR UPDATE SKIP LOCKED)",
        )
        .bind(keep.as_secs_f64())
        .bind(PRUNE_BATCH)
        .execute(db)
        .await?
        .rows_affected();
        pruned += deleted;
        if deleted < PRUNE_BATCH as u64 {
            return Ok(pruned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn the_header_is_checked() {
        assert_eq!(key_of(&headers(&[])).unwrap(), None);
        assert_eq!(
            key_of(&headers(&[b"\"8e03978e-40d5-43e8\""])).unwrap(),
            Some("\"8e03978e-40d5-43e8\"".into())
        );
        let long = "k".repeat(MAX_LEN);
        assert_eq!(
            key_of(&headers(&[long.as_bytes()])).unwrap(),
            Some(long.clone())
        );
        let longer = "k".repeat(MAX_LEN + 1);
        for bad in [
            headers(&[b""]),
            headers(&[longer.as_bytes()]),
            headers(&[b"caf\xc3\xa9"]),
            headers(&[b"tab\there"]),
            headers(&[b"one", b"two"]),
        ] {
            let e = key_of(&bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.code, "invalid_idempotency_key");
        }
    }

    #[test]
    fn other_bytes_under_a_used_key_are_refused() {
        let prior = Prior {
            analysis_id: Uuid::nil(),
            sha256: "a".repeat(64),
            response: serde_json::json!({"analysis_id": Uuid::nil()}),
        };
        assert_eq!(
            replay(prior.clone(), &"a".repeat(64)).unwrap().status(),
            StatusCode::ACCEPTED
        );
        let e = replay(prior, &"b".repeat(64)).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.code, "idempotency_key_reused");
    }
}
