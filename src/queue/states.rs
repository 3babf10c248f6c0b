//! The job states a job waits in and the ones it never leaves, shared by
//! the queue's operations and the analyses' status.

/// States a job waits in before a claim (claimable once `run_at` passes).
pub const WAITING: &[&str] = &["available", "scheduled", "retryable"];
/// States a job never leaves.
pub const FINISHED: &[&str] = &["completed", "discarded", "cancelled"];
