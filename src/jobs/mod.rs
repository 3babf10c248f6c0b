//! The job kinds the appliance runs itself, in its job-runner processes
//! (`crate::runner`): `static` (static analysis of a quarantined sample)
//! and `webhook` (telling a submitter its analysis finished). Each kind
//! turns one claimed job into an `Outcome`; the runner owns the lease and
//! reports the outcome through `analyses::jobs`.

pub mod static_analysis;
pub mod webhook;

use std::time::Duration;

use serde_json::Value;

/// How an attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// Completed; the document is the job's result, kept on the analysis
    /// under the job's kind.
    Done(Value),
    /// This attempt failed and another may succeed: the queue retries it
    /// after its backoff (or discards it after `max_attempts`).
    Retry(String),
    /// No attempt can succeed: discarded now, with this reason.
    Discard(String),
    /// Not attempted (held back by a limit): back to the queue for no
    /// earlier than the delay, the attempt not counted.
    Later(String, Duration),
}
