//! The analysis bridge's HTTP API (role `bridge`; `admin` may do all of it):
//! claim jobs with a long poll, hold them by heartbeat, report progress,
//! complete or fail them, read a job. Admins cancel. The sample itself
//! comes from `export::download`, the route every role downloads through.
//!
//! Every holder call presents the lease token it got from the claim; a
//! lease that expired or went to another holder answers 409 and changes
//! nothing. Job changes and the analysis status they cause commit together
//! with their audit rows.

mod body;
mod claim;
mod jobs;

pub use claim::claim;
pub use jobs::{cancel, complete, fail, get_job, heartbeat, progress};

use axum::http::StatusCode;

use crate::api_error::ApiError;
use crate::queue::QueueError;

/// The queues a claimer may name: the ones the product creates.
pub const QUEUES: &[&str] = &["analysis", "static", "notify"];

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
