//! Maintenance: expired leases go back to the queue (or are discarded when
//! that was the last attempt) and finished jobs older than the retention
//! are deleted in batches. One process at a time does it, whichever nodes
//! run: each step takes a transaction-level advisory lock and a process
//! that does not get it skips the pass.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::error::QueueError;

/// A job whose lease ran out, and where it went.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Reclaimed {
    pub id: Uuid,
    pub queue: String,
    pub analysis_id: Option<Uuid>,
    /// `retryable` (claimable at once) or `discarded`.
    pub state: String,
}

/// Returns every running job whose lease expired (of one queue, or all) to
/// the queue. The expired attempt counts: it is recorded in the job's
/// errors, and the last allowed attempt ends in `discarded`.
pub async fn reclaim_expired(
    conn: &mut PgConnection,
    queue: Option<&str>,
) -> Result<Vec<Reclaimed>, QueueError> {
    let rows = sqlx::query_as::<_, Reclaimed>(
        "UPDATE jobs SET
                state = CASE WHEN attempt >= max_attempts THEN 'discarded' ELSE 'retryable' END,
                finished_at = CASE WHEN attempt >= max_attempts THEN now() END,
                run_at = now(),
                errors = errors || jsonb_build_array(jsonb_build_object(
                    'attempt', attempt, 'at', now(),
                    'error', 'lease expired (holder ' || coalesce(lease_holder, '?') || ')')),
                lease_until = NULL, updated_at = now()
          WHERE state = 'running' AND lease_until <= now()
            AND ($1::text IS NULL OR queue = $1)
         RETURNING id, queue, analysis_id, state",
    )
    .bind(queue)
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

#[derive(Debug, Default)]
pub struct Maintenance {
    /// False when another process holds the maintenance lock.
    pub ran: bool,
    pub reclaimed: Vec<Reclaimed>,
    pub pruned: u64,
}

const PRUNE_BATCH: i64 = 1000;

/// One maintenance pass. `on_reclaimed` runs inside the reclaim's
/// transaction so the caller can update what depends on the jobs (the
/// analyses' status) atomically with them.
pub async fn maintain<F>(
    db: &PgPool,
    retention: Duration,
    mut on_reclaimed: F,
) -> Result<Maintenance, QueueError>
where
    F: for<'c> FnMut(
        &'c mut PgConnection,
        &'c [Reclaimed],
    ) -> futures_util::future::BoxFuture<'c, Result<(), sqlx::Error>>,
{
    let mut report = Maintenance::default();
    let mut conn = db.acquire().await?;
    {
        let mut tx = conn.begin().await?;
        if !try_lock(&mut tx).await? {
            return Ok(report);
        }
        report.ran = true;
        report.reclaimed = reclaim_expired(&mut tx, None).await?;
        if !report.reclaimed.is_empty() {
            on_reclaimed(&mut tx, &report.reclaimed).await?;
        }
        tx.commit().await?;
    }
    // Small batches, each its own transaction: pruning never holds many
    // row locks or a long snapshot on the live table.
    loop {
        let mut tx = conn.begin().await?;
        if !try_lock(&mut tx).await? {
            break;
        }
        let deleted = sqlx::query(
            "DELETE FROM jobs WHERE id IN (
                 SELECT id FROM jobs
                  WHERE finished_at IS NOT NULL
                    AND finished_at < now() - make_interval(secs => $1)
                  ORDER BY finished_at LIMIT $2)",
        )
        .bind(retention.as_secs_f64())
        .bind(PRUNE_BATCH)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        report.pruned += deleted;
        if deleted < PRUNE_BATCH as u64 {
            break;
        }
    }
    Ok(report)
}

async fn try_lock(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
        .bind("sandgnat.queue.maintenance")
        .fetch_one(conn)
        .await
}
