//! The queue's errors, as types: the HTTP layer maps `StaleLease` and
//! `Finished` to 409 and `NotFound` to 404.

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("job not found")]
    NotFound,
    /// The caller's lease token is not the job's current one, the lease
    /// expired, or the job is no longer running: someone else owns it now,
    /// or nobody does; nothing was changed.
    #[error("stale lease: the job is no longer held with this token")]
    StaleLease,
    /// Cancel on a job that already finished.
    #[error("the job already finished ({0})")]
    Finished(String),
    #[error("a live job with this unique key exists")]
    Duplicate,
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}
