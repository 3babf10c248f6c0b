//! Claiming: a batch of the highest-priority, oldest available jobs of one
//! queue, locked with `SKIP LOCKED` so concurrent claimers never share a
//! job; each claim bumps the attempt, which is the lease token.

use super::{JobId, QueueError};
use sqlx::PgConnection;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: JobId,
    pub kind: String,
    pub payload: serde_json::Value,
    /// The lease token: pass it back to complete/fail/heartbeat.
    pub attempt: i32,
}

pub async fn claim(
    conn: &mut PgConnection,
    queue: &str,
    max_jobs: i64,
    lease_seconds: f64,
) -> Result<Vec<ClaimedJob>, QueueError> {
    let jobs = sqlx::query_as::<_, ClaimedJob>(
        "WITH picked AS (
             SELECT id FROM jobs
              WHERE queue = $1 AND state = 'available' AND run_at <= now()
              ORDER BY priority DESC, run_at, id
              LIMIT $2
              FOR UPDATE SKIP LOCKED)
         UPDATE jobs j SET state = 'running', attempt = j.attempt + 1,
                lease_until = now() + make_interval(secs => $3)
           FROM picked WHERE j.id = picked.id
         RETURNING j.id, j.kind, j.payload, j.attempt",
    )
    .bind(queue)
    .bind(max_jobs)
    .bind(lease_seconds)
    .fetch_all(conn)
    .await?;
    Ok(jobs)
}
