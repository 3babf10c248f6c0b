//! The analysis bridge's HTTP API (role `bridge`; `admin` may do all of it):
//! claim jobs with a long poll, hold them by heartbeat, report progress,
//! complete or fail them, read a job. Admins cancel. The sample itself
//! comes from `export::download`, the route every role downloads through.
//!
//! Every holder call presents the lease token it got from the claim; a
//! lease that expired or went to another holder answers 409 and changes
//! nothing. Job changes and the analysis status they cause commit together
//! with their audit rows. Only the queues `queue.external` names can be
//! claimed or held here: the others are the appliance's own runners'.

mod body;
mod claim;
mod jobs;

pub use claim::claim;
pub use jobs::{cancel, complete, fail, get_job, heartbeat, progress};

use axum::http::StatusCode;

use crate::api_error::ApiError;
use crate::queue::QueueError;
use crate::worker::state::AppState;

/// The queues a claimer may name: the ones the product creates.
pub const QUEUES: &[&str] = &["analysis", "static", "notify"];

/// 403 for a queue the appliance keeps to its own runners.
fn internal_queue(queue: &str) -> ApiError {
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
async fn require_external(app: &AppState, id: uuid::Uuid) -> Result<(), ApiError> {
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

fn queue_error(e: QueueError) -> ApiError {
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

fn parse_job_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{raw:?} is not a job id (a UUID)"),
        )
    })
}
