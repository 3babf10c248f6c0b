//! Completion with lease fencing: the update matches only while the job is
//! running under the caller's token, so a stale holder changes nothing.

use super::{JobId, QueueError};
use sqlx::PgConnection;

pub async fn complete(
    conn: &mut PgConnection,
    id: JobId,
    token: i32,
    result: serde_json::Value,
) -> Result<(), QueueError> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'completed', result = $3, lease_until = NULL, finished_at = now()
          WHERE id = $1 AND attempt = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(token)
    .bind(result)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(());
    }
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Err(match exists {
        Some(_) => QueueError::StaleLease,
        None => QueueError::NotFound,
    })
}
