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
mod checks;
mod claim;
mod jobs;

pub use checks::QUEUES;
pub use claim::claim;
pub use jobs::{cancel, complete, fail, get_job, heartbeat, progress};
