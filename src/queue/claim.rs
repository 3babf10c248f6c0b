//! Claiming: a batch of the highest-priority, oldest claimable jobs of one
//! queue, locked with `SKIP LOCKED` so concurrent claimers never share a
//! job; each claim bumps the attempt, which is the lease token.
//!
//! With a `max_running` cap, claims of that queue take a transaction-level
//! advisory lock first, so that counting the running jobs and claiming up
//! to the cap is one step for every claimer on every node.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::maintain::{reclaim_expired, Reclaimed};
use super::{JobId, QueueError};

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// The lease token: pass it back to heartbeat / complete / fail.
    pub attempt: i32,
    pub max_attempts: i32,
    pub analysis_id: Option<Uuid>,
    pub lease_until: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub queue: &'a str,
    pub max_jobs: u32,
    pub lease: Duration,
    /// Who holds the lease (an API key's name, a runner's pid): shown on
    /// the job and in the error of a lease that expired.
    pub holder: &'a str,
    /// 0: no cap.
    pub max_running: u32,
}

/// The advisory-lock key of a queue's claims (and of maintenance, under
/// its own name): one 64-bit hash of a name in our own namespace.
pub(super) const LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

pub async fn claim(
    conn: &mut PgConnection,
    req: &Claim<'_>,
) -> Result<(Vec<ClaimedJob>, Vec<Reclaimed>), QueueError> {
    let mut tx = conn.begin().await?;
    let mut limit = i64::from(req.max_jobs);
    let mut reclaimed = Vec::new();
    if req.max_running > 0 {
        sqlx::query(LOCK_SQL)
            .bind(format!("sandgnat.claim.{}", req.queue))
            .execute(&mut *tx)
            .await?;
        // A lease that ran out frees its slot now, not at the next
        // maintenance pass, so the cap counts only live holders.
        reclaimed = reclaim_expired(&mut tx, Some(req.queue)).await?;
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'running'")
                .bind(req.queue)
                .fetch_one(&mut *tx)
                .await?;
        limit = limit.min(i64::from(req.max_running) - running);
    }
    if limit <= 0 {
        tx.commit().await?;
        return Ok((Vec::new(), reclaimed));
    }
    // The locking SELECT sits in a CTE with its LIMIT, so the planner cannot
    // lock more rows than it hands out.
    let jobs = sqlx::query_as::<_, ClaimedJob>(
        "WITH picked AS (
             SELECT id FROM jobs
              WHERE queue = $1 AND state IN ('available', 'scheduled', 'retryable')
                AND run_at <= now()
              ORDER BY priority DESC, run_at, id
              LIMIT $2
              FOR UPDATE SKIP LOCKED)
         UPDATE jobs j SET state = 'running', attempt = j.attempt + 1,
                lease_until = now() + make_interval(secs => $3), lease_holder = $4,
                attempted_at = now(), updated_at = now(), progress = NULL
           FROM picked WHERE j.id = picked.id
         RETURNING j.id, j.queue, j.kind, j.payload, j.attempt, j.max_attempts,
                   j.analysis_id, j.lease_until",
    )
    .bind(req.queue)
    .bind(limit)
    .bind(req.lease.as_secs_f64())
    .bind(req.holder)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((jobs, reclaimed))
}
