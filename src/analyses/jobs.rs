//! Job changes with their analysis bookkeeping, for every caller that runs
//! jobs (the bridge over HTTP, the appliance's own job runners): each
//! change commits with its audit row, the result kept on the analysis, and
//! the analysis status it causes; queues that got work are woken after the
//! commit.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::status::{self, Actor};
use crate::queue::{self, Backoff, Claim, ClaimedJob, Notifier, QueueError};

/// The analysis side of a change.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The analysis's new status, when it changed.
    pub analysis_status: Option<String>,
}

/// Claims a batch and moves the analyses it starts to `running`.
pub async fn claim(
    db: &PgPool,
    notifier: &Notifier,
    req: &Claim<'_>,
) -> Result<Vec<ClaimedJob>, QueueError> {
    let mut tx = db.begin().await?;
    let (jobs, reclaimed) = queue::claim(&mut tx, req).await?;
    let analyses: BTreeSet<_> = jobs
        .iter()
        .filter_map(|j| j.analysis_id)
        .chain(reclaimed.iter().filter_map(|r| r.analysis_id))
        .collect();
    let actor = Actor {
        name: req.holder,
        request_id: None,
    };
    let mut woke = Vec::new();
    for analysis in analyses {
        let synced = status::sync(
            &mut tx,
            analysis,
            &actor,
            json!({ "claimed_by": req.holder }),
        )
        .await?;
        woke.extend(synced.woke);
    }
    tx.commit().await?;
    for q in woke {
        notifier.poke(&q);
    }
    Ok(jobs)
}

pub async fn complete(
    db: &PgPool,
    notifier: &Notifier,
    id: Uuid,
    token: &str,
    result: Value,
    actor: &Actor<'_>,
) -> Result<Outcome, QueueError> {
    let mut tx = db.begin().await?;
    let done = queue::complete(&mut tx, id, token, result.clone()).await?;
    let mut synced = None;
    if let Some(analysis) = done.analysis_id {
        // Kept on the analysis: the job row is pruned after the retention.
        sqlx::query(
            "UPDATE analyses SET results = results || jsonb_build_object($2::text, $3::jsonb),
                    updated_at = now() WHERE id = $1",
        )
        .bind(analysis)
        .bind(&done.kind)
        .bind(&result)
        .execute(&mut *tx)
        .await?;
        let details = json!({ "job": id, "kind": done.kind, "attempt": done.attempt });
        synced = Some(record(&mut tx, analysis, actor, "job_completed", details).await?);
    }
    finish(tx, notifier, synced).await
}

/// Why an attempt failed and what should follow.
pub struct Failure<'a> {
    pub error: Value,
    /// Whether another attempt may succeed.
    pub retry: bool,
    pub backoff: &'a Backoff,
}

pub async fn fail(
    db: &PgPool,
    notifier: &Notifier,
    id: Uuid,
    token: &str,
    failure: Failure<'_>,
    actor: &Actor<'_>,
) -> Result<(queue::Failed, Outcome), QueueError> {
    let Failure {
        error,
        retry,
        backoff,
    } = failure;
    let mut tx = db.begin().await?;
    let failed = queue::fail(&mut tx, id, token, error.clone(), retry, backoff).await?;
    let mut synced = None;
    if let Some(analysis) = failed.analysis_id {
        let details = json!({ "job": id, "kind": failed.kind, "attempt": failed.attempt, "error": error,
                              "retry": retry, "state": failed.state, "run_at": failed.run_at });
        synced = Some(record(&mut tx, analysis, actor, "job_failed", details).await?);
    }
    let outcome = finish(tx, notifier, synced).await?;
    Ok((failed, outcome))
}

/// Puts a held job back for later without counting the attempt (see
/// `queue::snooze`); no audit row: nothing happened to the analysis.
pub async fn snooze(
    db: &PgPool,
    notifier: &Notifier,
    id: Uuid,
    token: &str,
    delay: std::time::Duration,
    actor: &Actor<'_>,
) -> Result<Outcome, QueueError> {
    let mut tx = db.begin().await?;
    let snoozed = queue::snooze(&mut tx, id, token, delay).await?;
    let mut synced = None;
    if let Some(analysis) = snoozed.analysis_id {
        let cause = json!({ "event": "job_deferred", "job": id });
        synced = Some(status::sync(&mut tx, analysis, actor, cause).await?);
    }
    finish(tx, notifier, synced).await
}

pub async fn cancel(
    db: &PgPool,
    notifier: &Notifier,
    id: Uuid,
    actor: &Actor<'_>,
) -> Result<(queue::Cancelled, Outcome), QueueError> {
    let mut tx = db.begin().await?;
    let cancelled = queue::cancel(&mut tx, id).await?;
    let mut synced = None;
    if let Some(analysis) = cancelled.analysis_id {
        let details = json!({ "job": id, "kind": cancelled.kind, "previous": cancelled.previous });
        synced = Some(record(&mut tx, analysis, actor, "job_cancelled", details).await?);
    }
    let outcome = finish(tx, notifier, synced).await?;
    Ok((cancelled, outcome))
}

async fn record(
    conn: &mut PgConnection,
    analysis: Uuid,
    actor: &Actor<'_>,
    event: &str,
    details: Value,
) -> Result<status::Synced, sqlx::Error> {
    status::audit(conn, analysis, actor, event, details).await?;
    status::sync(conn, analysis, actor, json!({ "event": event })).await
}

async fn finish(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    notifier: &Notifier,
    synced: Option<status::Synced>,
) -> Result<Outcome, QueueError> {
    tx.commit().await?;
    let mut outcome = Outcome::default();
    if let Some(synced) = synced {
        for q in &synced.woke {
            notifier.poke(q);
        }
        outcome.analysis_status = synced.changed.map(|(_, to)| to);
    }
    Ok(outcome)
}
