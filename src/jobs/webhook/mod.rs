//! The `webhook` job: tells a submitter's `callback_url` that its analysis
//! finished. The job is held until the analysis reaches `completed` or
//! `failed` (see `analyses::status`), then a runner POSTs the analysis
//! summary as JSON, signed (see `signature`), to an address it resolved
//! and checked itself (see `destination`), with no redirect followed and
//! the whole exchange bounded by `queue.webhook_timeout`.
//!
//! A 2xx answer completes the job. Any other answer, a timeout or a
//! connection failure fails the attempt and the queue retries it with its
//! backoff, up to `queue.notify.max_attempts`. A destination that is
//! refused (bad URL, private address) is discarded at once: no retry can
//! make it allowed. A destination address that already had
//! `queue.webhook_per_host` deliveries this second gets the job back later
//! (`hostrate`), the attempt not counted.

pub mod client;
pub mod destination;
pub mod hostrate;
pub mod signature;

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use super::Outcome;
use crate::config::Queue;
use crate::queue::ClaimedJob;

/// The document a receiver gets. `delivery` (the job id) is the same on
/// every attempt of one notification, so a receiver can drop repeats.
pub async fn summary(db: &PgPool, job: &ClaimedJob, analysis_id: Uuid) -> Result<Value, String> {
    #[allow(clippy::type_complexity)]
    let row: Option<(
        String,
        Option<String>,
        Json<Value>,
        Json<Value>,
        chrono::DateTime<chrono::Utc>,
        String,
        i64,
        String,
        Option<chrono::DateTime<chrono::Utc>>,
    )> = sqlx::query_as(
        "SELECT a.status, a.filename, a.yara_matches, a.results, a.updated_at,
                s.sha256, s.size, s.file_type,
                (SELECT max(at) FROM analysis_audit_log l
                  WHERE l.analysis_id = a.id AND l.event = 'status_changed'
                    AND l.details->>'to' IN ('completed', 'failed'))
           FROM analyses a JOIN samples s ON s.sha256 = a.sample_sha256
          WHERE a.id = $1",
    )
    .bind(analysis_id)
    .fetch_optional(db)
    .await
    .map_err(|e| format!("cannot read the analysis: {e}"))?;
    let Some((status, filename, yara, results, updated, sha256, size, file_type, finished)) = row
    else {
        return Err(format!("analysis {analysis_id} does not exist"));
    };
    let mut rules: Vec<String> = yara
        .0
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get("rule").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    rules.sort();
    rules.dedup();
    let mut keys: Vec<String> = results
        .0
        .as_object()
        .map(|o| o.keys().filter(|k| *k != "webhook").cloned().collect())
        .unwrap_or_default();
    keys.sort();
    Ok(json!({
        "event": "analysis.finished",
        "delivery": job.id,
        "attempt": job.attempt,
        "sent_at": chrono::Utc::now(),
        "analysis_id": analysis_id,
        "status": status,
        "sha256": sha256,
        "size": size,
        "file_type": file_type,
        "filename": filename,
        "yara": rules,
        "results": keys,
        "finished_at": finished.unwrap_or(updated),
    }))
}

pub async fn deliver(
    db: &PgPool,
    settings: &Queue,
    limiter: &hostrate::HostLimiter,
    job: &ClaimedJob,
) -> Outcome {
    let Some(url) = job.payload.get("url").and_then(Value::as_str) else {
        return Outcome::Discard("the job has no url".into());
    };
    let Some(analysis_id) = job.analysis_id.or_else(|| {
        job.payload
            .get("analysis_id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
    }) else {
        return Outcome::Discard("the job names no analysis".into());
    };
    let target = match destination::Target::parse(url) {
        Ok(t) => t,
        Err(refused) => return Outcome::Discard(refused.0),
    };
    let body = match summary(db, job, analysis_id).await {
        Ok(v) => Bytes::from(v.to_string()),
        Err(e) => return Outcome::Retry(e),
    };
    let mut headers = vec![
        ("x-sandgnat-event", "analysis.finished".to_string()),
        ("x-sandgnat-delivery", job.id.to_string()),
    ];
    if let Some(secret) = &settings.webhook_secret {
        headers.push((signature::HEADER, signature::sign(secret.as_bytes(), &body)));
    }
    let timeout = Duration::from_secs(settings.webhook_timeout);
    let attempt = async {
        let addrs = match destination::resolve(&target, settings.webhook_allow_private).await {
            Err(refused) => return Outcome::Discard(refused.0),
            Ok(Err(transient)) => return Outcome::Retry(transient),
            Ok(Ok(addrs)) => addrs,
        };
        let mut ips: Vec<_> = addrs.iter().map(|a| a.ip()).collect();
        ips.sort();
        ips.dedup();
        if let Err(wait) = limiter.admit(&ips, Instant::now()) {
            return Outcome::Later(
                format!(
                    "{} had queue.webhook_per_host ({}) deliveries this second",
                    target.host, settings.webhook_per_host
                ),
                wait,
            );
        }
        match client::post(&target, &addrs, &headers, body).await {
            Ok(answer) if (200..300).contains(&answer.status) => Outcome::Done(json!({
                "delivered_at": chrono::Utc::now(),
                "http_status": answer.status,
                "attempt": job.attempt,
            })),
            Ok(answer) => Outcome::Retry(format!(
                "{} answered HTTP {}{}{}",
                target.host,
                answer.status,
                if answer.body.is_empty() { "" } else { ": " },
                answer.body
            )),
            Err(e) => Outcome::Retry(e),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Retry(format!(
            "{} did not answer within queue.webhook_timeout ({} s)",
            target.host, settings.webhook_timeout
        )),
    }
}
