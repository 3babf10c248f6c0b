//! Heartbeat: a holder extends its lease (by any length up to the cap the
//! HTTP layer enforces) and may attach a progress document. Fenced like
//! every holder call: an expired or re-claimed lease changes nothing.

use std::time::Duration;

use sqlx::PgConnection;

use super::{JobId, QueueError};

/// Returns the new lease expiry.
pub async fn heartbeat(
    conn: &mut PgConnection,
    id: JobId,
    token: i32,
    lease: Duration,
    progress: Option<serde_json::Value>,
) -> Result<chrono::DateTime<chrono::Utc>, QueueError> {
    let until: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "UPDATE jobs SET lease_until = now() + make_interval(secs => $3), updated_at = now(),
                progress = COALESCE($4, progress)
          WHERE id = $1 AND attempt = $2 AND state = 'running' AND lease_until > now()
         RETURNING lease_until",
    )
    .bind(id)
    .bind(token)
    .bind(lease.as_secs_f64())
    .bind(progress)
    .fetch_optional(&mut *conn)
    .await?;
    match until {
        Some(t) => Ok(t),
        None => Err(fence_failure(conn, id).await),
    }
}

/// Why a fenced update matched nothing: the job is gone, or it is not held
/// with that token any more.
pub(super) async fn fence_failure(conn: &mut PgConnection, id: JobId) -> QueueError {
    match sqlx::query_scalar::<_, i32>("SELECT 1 FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
    {
        Ok(Some(_)) => QueueError::StaleLease,
        Ok(None) => QueueError::NotFound,
        Err(e) => QueueError::Db(e),
    }
}
