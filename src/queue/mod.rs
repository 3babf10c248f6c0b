//! The Postgres job queue (DESIGN.md §3): jobs live in the `jobs` table
//! (migrations/20261122000002_jobs.sql); this module owns enqueueing inside a
//! caller's transaction, claiming with `FOR UPDATE SKIP LOCKED`, and
//! completion with lease fencing (the lease token is the attempt number).

mod claim;
mod enqueue;
mod error;
mod finish;

pub use claim::{claim, ClaimedJob};
pub use enqueue::{enqueue, JobId, NewJob};
pub use error::QueueError;
pub use finish::complete;

/// The migrations of the whole appliance, embedded in the binary.
pub use crate::store::MIGRATOR;
