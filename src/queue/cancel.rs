//! Cancellation (admin): a waiting job never runs; a running one is marked
//! cancelled, so its holder's next heartbeat, complete or fail gets 409.

use sqlx::PgConnection;
use uuid::Uuid;

use super::enqueue::JobId;
use super::error::QueueError;

#[derive(Debug, Clone)]
pub struct Cancelled {
    pub previous: String,
    pub kind: String,
    pub analysis_id: Option<Uuid>,
}

pub async fn cancel(conn: &mut PgConnection, id: JobId) -> Result<Cancelled, QueueError> {
    // The row lock orders this against a concurrent complete: whichever
    // commits first wins and the other sees the new state.
    let current: Option<(String, String, Option<Uuid>)> =
        sqlx::query_as("SELECT state, kind, analysis_id FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let (previous, kind, analysis_id) = current.ok_or(QueueError::NotFound)?;
    if super::states::FINISHED.contains(&previous.as_str()) {
        return Err(QueueError::Finished(previous));
    }
    sqlx::query(
        "UPDATE jobs SET state = 'cancelled', lease_until = NULL, finished_at = now(),
                updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(Cancelled {
        previous,
        kind,
        analysis_id,
    })
}
