//! Reading the queue: one job as the bridge and admins see it, and the
//! counts and ages behind `sandgnat queue stats` and the queue metrics.

use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::enqueue::JobId;
use super::error::QueueError;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub state: String,
    pub payload: serde_json::Value,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub analysis_id: Option<Uuid>,
    pub lease_holder: Option<String>,
    pub lease_until: Option<chrono::DateTime<chrono::Utc>>,
    /// `null` while a job is held for release (`run_at` infinity).
    pub run_at: Option<chrono::DateTime<chrono::Utc>>,
    pub progress: Option<serde_json::Value>,
    pub result: Option<serde_json::Value>,
    pub errors: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub(crate) const JOB_COLUMNS: &str = "id, queue, kind, state, payload, priority, attempt,
    max_attempts, analysis_id, lease_holder, lease_until,
    CASE WHEN isfinite(run_at) THEN run_at END AS run_at, progress, result, errors,
    created_at, updated_at, finished_at";

pub async fn get(conn: &mut PgConnection, id: JobId) -> Result<Job, QueueError> {
    sqlx::query_as::<_, Job>(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or(QueueError::NotFound)
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QueueStats {
    pub queue: String,
    pub state: String,
    pub jobs: i64,
    /// Seconds the oldest claimable job has waited (waiting states only).
    pub oldest_available_seconds: Option<f64>,
}

pub async fn stats(db: &PgPool) -> Result<Vec<QueueStats>, QueueError> {
    let rows = sqlx::query_as::<_, QueueStats>(
        "SELECT queue, state, count(*) AS jobs,
                CASE WHEN state IN ('available', 'scheduled', 'retryable') THEN
                    extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8
                END AS oldest_available_seconds
           FROM jobs GROUP BY queue, state ORDER BY queue, state",
    )
    .fetch_all(db)
    .await?;
    Ok(rows)
}
