//! Claiming: a batch of the highest-priority, oldest claimable jobs of one
//! queue, locked with `SKIP LOCKED` so concurrent claimers never share a
//! job; each claim bumps the attempt and issues the job a fresh lease
//! token, of which the job keeps only the hash.
//!
//! With a `max_running` cap, claims of that queue take a transaction-level
//! advisory lock first, so that counting the running jobs and claiming up
//! to the cap is one step for every claimer on every node.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::enqueue::JobId;
use super::error::QueueError;
use super::lease::LeaseToken;
use super::maintain::{reclaim_expired, Reclaimed};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClaimedJob {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// Pass it back to heartbeat / complete / fail.
    pub lease_token: LeaseToken,
    pub attempt: i32,
    pub max_attempts: i32,
    pub analysis_id: Option<Uuid>,
    pub lease_until: chrono::DateTime<chrono::Utc>,
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: JobId,
    queue: String,
    kind: String,
    payload: serde_json::Value,
    attempt: i32,
    max_attempts: i32,
    analysis_id: Option<Uuid>,
    lease_until: chrono::DateTime<chrono::Utc>,
    /// 1-based: which of the tokens offered went to this job.
    token_no: i64,
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
    // One fresh token per job that may be handed out; the picked rows are
    // numbered in claim order and each takes the hash of the token with
    // its number.
    let tokens: Vec<LeaseToken> = (0..limit).map(|_| LeaseToken::generate()).collect();
    let hashes: Vec<Vec<u8>> = tokens
        .iter()
        .map(|t| LeaseToken::hash_of(t.as_str()))
        .collect();
    // The locking SELECT sits in a CTE with its LIMIT, so the planner cannot
    // lock more rows than it hands out.
    let mut rows = sqlx::query_as::<_, ClaimedRow>(
        "WITH picked AS (
             SELECT id, priority, run_at FROM jobs
              WHERE queue = $1 AND state IN ('available', 'scheduled', 'retryable')
                AND run_at <= now()
              ORDER BY priority DESC, run_at, id
              LIMIT $2
              FOR UPDATE SKIP LOCKED),
         numbered AS (
             SELECT id, row_number() OVER (ORDER BY priority DESC, run_at, id) AS n
               FROM picked),
         offered AS (SELECT * FROM unnest($5::bytea[]) WITH ORDINALITY AS t(hash, n))
         UPDATE jobs j SET state = 'running', attempt = j.attempt + 1,
                lease_until = now() + make_interval(secs => $3), lease_holder = $4,
                lease_token_hash = offered.hash,
                attempted_at = now(), updated_at = now(), progress = NULL
           FROM numbered JOIN offered USING (n) WHERE j.id = numbered.id
         RETURNING j.id, j.queue, j.kind, j.payload, j.attempt, j.max_attempts,
                   j.analysis_id, j.lease_until, offered.n AS token_no",
    )
    .bind(req.queue)
    .bind(limit)
    .bind(req.lease.as_secs_f64())
    .bind(req.holder)
    .bind(&hashes)
    .fetch_all(&mut *tx)
    .await?;
    // Handed out in the order they were picked: highest priority first.
    rows.sort_by_key(|r| r.token_no);
    let mut jobs = Vec::with_capacity(rows.len());
    for r in rows {
        let token = usize::try_from(r.token_no - 1)
            .ok()
            .and_then(|i| tokens.get(i))
            .cloned()
            .ok_or(QueueError::Db(sqlx::Error::Protocol(
                "a claimed job took no lease token".into(),
            )))?;
        jobs.push(ClaimedJob {
            id: r.id,
            queue: r.queue,
            kind: r.kind,
            payload: r.payload,
            lease_token: token,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            analysis_id: r.analysis_id,
            lease_until: r.lease_until,
        });
    }
    tx.commit().await?;
    Ok((jobs, reclaimed))
}
