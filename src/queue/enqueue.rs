//! Enqueueing on the caller's connection, so a job commits or rolls back
//! with the caller's transaction (no NOTIFY here: wake-ups go after commit).

use super::QueueError;
use sqlx::PgConnection;
use uuid::Uuid;

pub type JobId = Uuid;

#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i16,
    pub max_attempts: i32,
    pub unique_key: Option<String>,
    pub run_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub async fn enqueue(conn: &mut PgConnection, job: NewJob) -> Result<JobId, QueueError> {
    let id = Uuid::new_v4();
    let res = sqlx::query(
        "INSERT INTO jobs (id, queue, kind, payload, priority, max_attempts, unique_key, run_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, COALESCE($8, now()))",
    )
    .bind(id)
    .bind(&job.queue)
    .bind(&job.kind)
    .bind(&job.payload)
    .bind(job.priority)
    .bind(job.max_attempts)
    .bind(&job.unique_key)
    .bind(job.run_at)
    .execute(conn)
    .await;
    match res {
        Ok(_) => Ok(id),
        // The partial unique index is the one arbiter of duplicates, even
        // between concurrent transactions.
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("jobs_unique_live") => {
            Err(QueueError::Duplicate)
        }
        Err(e) => Err(e.into()),
    }
}
