//! The end of an attempt, fenced by the lease token: complete with a
//! result, or fail with an error that is kept in the job's history, then
//! either wait for a retry (backoff) or be discarded after `max_attempts`;
//! or put the job back for later without counting the attempt (the holder
//! chose not to run it yet).

use sqlx::PgConnection;
use uuid::Uuid;

use super::backoff::Backoff;
use super::enqueue::JobId;
use super::error::QueueError;
use super::lease::{fence_failure, LeaseToken};

/// What a finished attempt belonged to, for the caller's bookkeeping.
#[derive(Debug, Clone)]
pub struct Finished {
    pub kind: String,
    /// The attempt that finished (1-based).
    pub attempt: i32,
    pub analysis_id: Option<Uuid>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Failed {
    pub kind: String,
    /// The attempt that failed (1-based).
    pub attempt: i32,
    pub analysis_id: Option<Uuid>,
    /// `retryable` or `discarded`.
    pub state: String,
    pub run_at: chrono::DateTime<chrono::Utc>,
}

pub async fn complete(
    conn: &mut PgConnection,
    id: JobId,
    token: &str,
    result: serde_json::Value,
) -> Result<Finished, QueueError> {
    let row: Option<(String, i32, Option<Uuid>)> = sqlx::query_as(
        "UPDATE jobs SET state = 'completed', result = $3, lease_until = NULL,
                finished_at = now(), updated_at = now()
          WHERE id = $1 AND lease_token_hash = $2 AND state = 'running' AND lease_until > now()
         RETURNING kind, attempt, analysis_id",
    )
    .bind(id)
    .bind(LeaseToken::hash_of(token))
    .bind(result)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some((kind, attempt, analysis_id)) => Ok(Finished {
            kind,
            attempt,
            analysis_id,
        }),
        None => Err(fence_failure(conn, id).await),
    }
}

/// `retry: false` discards at once (the holder knows another try is
/// pointless, e.g. a sample the sandbox cannot run).
pub async fn fail(
    conn: &mut PgConnection,
    id: JobId,
    token: &str,
    error: serde_json::Value,
    retry: bool,
    backoff: &Backoff,
) -> Result<Failed, QueueError> {
    let hash = LeaseToken::hash_of(token);
    // The backoff grows with the attempt, which the token no longer
    // carries: read it (locking the row), then update under the same fence.
    let attempt: Option<i32> = sqlx::query_scalar(
        "SELECT attempt FROM jobs
          WHERE id = $1 AND lease_token_hash = $2 AND state = 'running' AND lease_until > now()
            FOR UPDATE",
    )
    .bind(id)
    .bind(&hash)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(attempt) = attempt else {
        return Err(fence_failure(conn, id).await);
    };
    let delay = backoff.delay(attempt);
    let row: Option<Failed> = sqlx::query_as(
        "UPDATE jobs SET
                    state = CASE WHEN $3 AND attempt < max_attempts THEN 'retryable'
                                 ELSE 'discarded' END,
                    run_at = CASE WHEN $3 AND attempt < max_attempts
                                  THEN now() + make_interval(secs => $5) ELSE run_at END,
                    finished_at = CASE WHEN $3 AND attempt < max_attempts THEN NULL
                                       ELSE now() END,
                    errors = errors || jsonb_build_array(jsonb_build_object(
                                 'attempt', attempt, 'at', now(), 'error', $4::jsonb)),
                    lease_until = NULL, updated_at = now()
              WHERE id = $1 AND lease_token_hash = $2 AND state = 'running' AND lease_until > now()
             RETURNING kind, attempt, analysis_id, state, run_at",
    )
    .bind(id)
    .bind(&hash)
    .bind(retry)
    .bind(error)
    .bind(delay.as_secs_f64())
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(failed) => Ok(failed),
        None => Err(fence_failure(conn, id).await),
    }
}

/// What a job put back for later belonged to.
#[derive(Debug, Clone)]
pub struct Snoozed {
    pub kind: String,
    pub analysis_id: Option<Uuid>,
}

/// Gives the job back to run no earlier than `delay` from now, as if this
/// attempt had not been made: it does not count towards `max_attempts`.
/// For a holder that held back on purpose (a rate limit), not one that
/// failed.
pub async fn snooze(
    conn: &mut PgConnection,
    id: JobId,
    token: &str,
    delay: std::time::Duration,
) -> Result<Snoozed, QueueError> {
    let row: Option<(String, Option<Uuid>)> = sqlx::query_as(
        "UPDATE jobs SET state = 'scheduled', attempt = attempt - 1,
                run_at = now() + make_interval(secs => $3), lease_until = NULL,
                lease_token_hash = NULL, updated_at = now()
          WHERE id = $1 AND lease_token_hash = $2 AND state = 'running' AND lease_until > now()
         RETURNING kind, analysis_id",
    )
    .bind(id)
    .bind(LeaseToken::hash_of(token))
    .bind(delay.as_secs_f64())
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some((kind, analysis_id)) => Ok(Snoozed { kind, analysis_id }),
        None => Err(fence_failure(conn, id).await),
    }
}

/// Completes a batch in one statement, each job fenced by its own token:
/// what a claimer that works through a batch uses. Returns, per job in
/// order, what `complete` would have returned for it.
pub async fn complete_many(
    conn: &mut PgConnection,
    done: &[(JobId, &str, serde_json::Value)],
) -> Result<Vec<Result<Finished, QueueError>>, QueueError> {
    let ids: Vec<JobId> = done.iter().map(|d| d.0).collect();
    let hashes: Vec<Vec<u8>> = done.iter().map(|d| LeaseToken::hash_of(d.1)).collect();
    let results: Vec<&serde_json::Value> = done.iter().map(|d| &d.2).collect();
    let rows: Vec<(JobId, String, i32, Option<Uuid>)> = sqlx::query_as(
        "UPDATE jobs j SET state = 'completed', result = d.result, lease_until = NULL,
                finished_at = now(), updated_at = now()
           FROM unnest($1::uuid[], $2::bytea[], $3::jsonb[]) AS d(id, token_hash, result)
          WHERE j.id = d.id AND j.lease_token_hash = d.token_hash AND j.state = 'running'
            AND j.lease_until > now()
         RETURNING j.id, j.kind, j.attempt, j.analysis_id",
    )
    .bind(&ids)
    .bind(&hashes)
    .bind(&results)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(done.len());
    for (id, _, _) in done {
        match rows.iter().find(|r| r.0 == *id) {
            Some((_, kind, attempt, analysis_id)) => out.push(Ok(Finished {
                kind: kind.clone(),
                attempt: *attempt,
                analysis_id: *analysis_id,
            })),
            None => out.push(Err(fence_failure(conn, *id).await)),
        }
    }
    Ok(out)
}
