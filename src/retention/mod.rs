//! Retention: samples' bytes are deleted `retention.sample_days` after the
//! sample was last submitted, unless a job waiting or running still needs
//! them; the sample's row, hashes, analyses and audit trail stay, marked
//! `content_purged`, with an audit row per purge. The pass runs once
//! across the cluster (`crate::duties`); an operator purges one sample at
//! once with `sandgnat samples purge` or `DELETE
//! /v1/samples/{sha256}/content` (`route`). Both go through `purge`, the
//! one place that deletes a sample's bytes on purpose.
//!
//! With the local quarantine each node keeps its own copies: the pass
//! deletes the copy on the node that runs it, and every other node's copy
//! of a purged sample goes with that node's sweep for leftovers. With an
//! S3 store there is one copy, deleted by the pass; a deletion that failed
//! (the store away, or the purging node dead between the mark and the
//! deletion) leaves an object only a purged row names, which no sweep
//! looks for yet.

pub mod purge;
pub mod route;

use serde_json::json;
use sqlx::PgPool;

use crate::analyses::status::Actor;
use crate::config::Retention;
use crate::storage::SampleStore;
pub use purge::{purge, PurgeError, Purged};

/// Samples looked at per query of a pass.
const BATCH: i64 = 200;

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub purged: u64,
    /// Found in use (a job started meanwhile) or purged by someone else.
    pub skipped: u64,
}

/// Purges every sample past `settings.sample_days` that no waiting or
/// running job needs.
pub async fn pass(
    db: &PgPool,
    settings: &Retention,
    store: &SampleStore,
) -> Result<Pass, sqlx::Error> {
    let mut done = Pass::default();
    if settings.sample_days == 0 {
        return Ok(done);
    }
    let actor = Actor {
        name: "sandgnat",
        request_id: None,
    };
    let mut after = String::new();
    loop {
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT s.sha256 FROM samples s
              WHERE NOT s.content_purged
                AND s.last_seen < now() - make_interval(days => $1)
                AND s.sha256 > $2
                AND NOT EXISTS (
                    SELECT 1 FROM analyses a JOIN jobs j ON j.analysis_id = a.id
                     WHERE a.sample_sha256 = s.sha256 AND j.kind <> 'webhook'
                       AND j.state IN ('available', 'scheduled', 'running', 'retryable'))
              ORDER BY s.sha256 LIMIT $3",
        )
        .bind(settings.sample_days as i32)
        .bind(&after)
        .bind(BATCH)
        .fetch_all(db)
        .await?;
        for sha256 in &due {
            let why = json!({ "reason": "retention", "sample_days": settings.sample_days });
            match purge(db, store, sha256, &actor, why).await {
                Ok(Purged::Now { .. }) => done.purged += 1,
                Ok(Purged::Already { .. }) | Err(PurgeError::InUse { .. }) => done.skipped += 1,
                Err(PurgeError::Unknown(_)) => done.skipped += 1,
                Err(PurgeError::Database(e)) => return Err(e),
            }
        }
        match due.last() {
            Some(last) if due.len() as i64 == BATCH => after = last.clone(),
            _ => break,
        }
    }
    if done.purged > 0 {
        tracing::info!(
            purged = done.purged,
            skipped = done.skipped,
            sample_days = settings.sample_days,
            "retention pass"
        );
    }
    Ok(done)
}
