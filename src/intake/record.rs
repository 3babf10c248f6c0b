//! The one transaction that makes a submission durable: the sample (new,
//! or seen again), the analysis, its `submitted` and `scanned` audit rows,
//! and the analysis jobs. Nothing is visible until it all commits, and no
//! NOTIFY happens inside it (the caller wakes the queues after commit).

use std::sync::LazyLock;

use serde_json::json;
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use super::metadata::Metadata;
use crate::queue::{self, NewJob};
use crate::scan::RuleMatch;

pub struct Submission<'a> {
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
    pub size: u64,
    pub file_type: String,
    pub storage_path: String,
    pub filename: String,
    pub meta: Metadata,
    pub key_id: i64,
    pub key_name: String,
    pub client_ip: Option<String>,
    pub request_id: String,
    pub matches: &'a [RuleMatch],
    pub scan_error: Option<&'a str>,
    pub queue: &'a crate::config::Queue,
    pub static_analysis: bool,
    /// `debug.no_enqueue`: benchmarks only.
    pub no_enqueue: bool,
}

/// What a committed submission left for the queue to announce.
pub struct Recorded {
    pub analysis_id: Uuid,
    /// Queues that got claimable jobs: wake them after commit.
    pub queues: Vec<&'static str>,
}

/// The jobs a submission creates (DESIGN.md §3): a detonation for the
/// bridge, static analysis inside the appliance when enabled, and a
/// webhook held until the analysis finishes when a callback URL was given.
fn jobs_for(id: Uuid, s: &Submission<'_>) -> Vec<NewJob> {
    let sample = json!({
        "analysis_id": id,
        "sha256": s.sha256,
        "size": s.size,
        "filename": s.filename,
        "file_type": s.file_type,
        "tlp": s.meta.tlp,
        "tags": s.meta.tags,
        "sample_url": format!("/v1/samples/{}/content", s.sha256),
    });
    let job = |queue: &str, kind: &str, payload: serde_json::Value| NewJob {
        priority: s.meta.priority,
        max_attempts: s.queue.limits(queue).max_attempts as i32,
        analysis_id: Some(id),
        ..NewJob::new(queue, kind, payload)
    };
    let mut jobs = vec![job("analysis", "detonate", sample.clone())];
    if s.static_analysis {
        jobs.push(job("static", "static", sample));
    }
    if let Some(url) = &s.meta.callback_url {
        jobs.push(NewJob {
            hold: true,
            ..job(
                "notify",
                "webhook",
                json!({ "analysis_id": id, "url": url }),
            )
        });
    }
    jobs
}

pub async fn record(db: &PgPool, s: &Submission<'_>) -> Result<Recorded, sqlx::Error> {
    // Time-ordered, as job ids (queue::enqueue_many says why). The
    // submission time it carries is on the analysis anyway.
    let id = Uuid::now_v7();
    let actor = format!("key:{}", s.key_name);
    let submitted = json!({
        "filename": s.filename,
        "size": s.size,
        "sha256": s.sha256,
        "client_ip": s.client_ip,
        "tags": s.meta.tags,
        "tlp": s.meta.tlp,
        "priority": s.meta.priority,
    });
    let scanned = json!({
        "rules": s.matches.iter().map(|m| format!("{}:{}", m.namespace, m.rule)).collect::<Vec<_>>(),
        "error": s.scan_error,
    });
    let jobs = if s.no_enqueue {
        Vec::new()
    } else {
        jobs_for(id, s)
    };
    let queues = jobs
        .iter()
        .filter(|j| !j.hold)
        .map(|j| match j.queue.as_str() {
            "analysis" => "analysis",
            "static" => "static",
            _ => "notify",
        })
        .collect();
    let batch = queue::Batch::new(jobs);
    let query = sqlx::query(&SUBMISSION)
        .bind(id)
        .bind(&s.sha256)
        .bind(&s.sha1)
        .bind(&s.md5)
        .bind(s.size as i64)
        .bind(&s.file_type)
        .bind(&s.storage_path)
        .bind(s.key_id)
        .bind(&s.client_ip)
        .bind(&s.filename)
        .bind(&s.meta.tags)
        .bind(&s.meta.tlp)
        .bind(s.meta.priority)
        .bind(Json(s.matches))
        .bind(&s.meta.callback_url)
        .bind(&s.request_id)
        .bind(&actor)
        .bind(Json(submitted))
        .bind(Json(scanned));
    // One statement, so one round trip and an implicit transaction: every
    // part commits together or not at all. Foreign keys are checked at the
    // end of the statement, when the sample and the analysis it inserts
    // exist.
    batch.bind(query).execute(db).await?;
    Ok(Recorded {
        analysis_id: id,
        queues,
    })
}

/// The whole submission as data-modifying CTEs of one INSERT.
///
/// - The sample: `DO NOTHING` takes no lock on a sample that exists.
/// - `last_seen`, the one row every submission of these bytes shares: its
///   lock lasts only to this statement's commit, and it is taken at most
///   once a second (last_seen is kept to the second), so concurrent
///   submissions of one sample (a campaign seen by many sensors) do not
///   queue on it. A sample inserted by this statement is not visible to
///   the UPDATE, and needs no update.
/// - The analysis, its jobs (`queue::Batch`, so the queue costs no round
///   trip of its own) and its two audit rows, whose ids follow the VALUES
///   order.
static SUBMISSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH sample AS (
              INSERT INTO samples (sha256, sha1, md5, size, file_type, storage_path)
              VALUES ($2, $3, $4, $5, $6, $7)
              ON CONFLICT (sha256) DO NOTHING),
         seen AS (
              UPDATE samples SET last_seen = now()
               WHERE sha256 = $2 AND last_seen < now() - interval '1 second'),
         analysis AS (
              INSERT INTO analyses (id, sample_sha256, api_key_id, client_ip, filename, tags,
                                    tlp, priority, yara_matches, callback_url, request_id)
              VALUES ($1, $2, $8, $9, $10, $11, $12, $13, $14, $15, $16)),
         enqueued AS ({})
         INSERT INTO analysis_audit_log (analysis_id, actor, event, details, request_id)
         VALUES ($1, $17, 'submitted', $18, $16), ($1, 'sandgnat', 'scanned', $19, $16)",
        queue::Batch::insert_sql(20)
    )
});
