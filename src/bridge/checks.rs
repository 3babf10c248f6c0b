//! What the bridge's routes share: the queues a claimer may name, the
//! refusal of the appliance's internal queues, a job id from a path, and
//! the answer for each queue error.

use axum::http::StatusCode;

use crate::api_error::ApiError;
use crate::queue::QueueError;
use crate::worker::state::AppState;

/// The queues a claimer may name: the ones the product creates.
pub const QUEUES: &[&str] = &["analysis", "static", "notify"];

/// 403 for a queue the appliance keeps to its own runners.
pub(super) fn internal_queue(queue: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "internal_queue",
        format!(
            "queue {queue:?} belongs to the appliance's own runners; over HTTP only the \
             queues in queue.external may be claimed or held"
        ),
    )
}

/// Refuses holder calls on a job of an internal queue (a job's queue never
/// changes, so looking first and changing after is not a race).
pub(super) async fn require_external(app: &AppState, id: uuid::Uuid) -> Result<(), ApiError> {
    let queue: Option<String> = sqlx::query_scalar("SELECT queue FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(&app.db)
        .await
        .map_err(crate::analyses::db_error)?;
    match queue {
        None => Err(ApiError::not_found("no such job")),
        Some(q) if app.settings.queue.is_external(&q) => Ok(()),
        Some(q) => Err(internal_queue(&q)),
    }
}

pub(super) fn queue_error(e: QueueError) -> ApiError {
    match e {
        QueueError::NotFound => ApiError::not_found("no such job"),
        QueueError::StaleLease => ApiError::new(
            StatusCode::CONFLICT,
            "lease_lost",
            "this lease token no longer holds the job (expired, re-claimed, cancelled or \
             finished); nothing was changed",
        ),
        QueueError::Finished(state) => ApiError::new(
            StatusCode::CONFLICT,
            "job_finished",
            format!("the job already finished ({state}); nothing was changed"),
        ),
        QueueError::Duplicate => ApiError::new(
            StatusCode::CONFLICT,
            "duplicate_job",
            "a live job with this unique key exists",
        ),
        QueueError::Db(e) => crate::analyses::db_error(e),
    }
}

/// A job id from a path: a UUID, else 400 `invalid_id`.
pub(super) fn parse_job_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    crate::api_error::parse_uuid(raw, "a job id")
}
