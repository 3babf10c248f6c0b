//! The Postgres job queue (DESIGN.md §3). Jobs live in the `jobs` table
//! (migrations `*_jobs.sql`, `*_queue_lifecycle.sql`); this module owns
//! their life: enqueueing inside a caller's transaction, claiming with
//! `FOR UPDATE SKIP LOCKED` under a per-queue concurrency cap, fenced
//! heartbeat / complete / fail (by a random lease token issued per claim),
//! cancellation, expired-lease reclaim, retention, wake-ups and stats.
//!
//! State machine: `available` / `scheduled` / `retryable` (waiting; claimable
//! once `run_at` passes) → `running` → `completed`, back to `retryable`, or
//! `discarded` after `max_attempts`; `cancelled` from any live state.

mod backoff;
mod cancel;
mod claim;
mod enqueue;
mod error;
mod finish;
mod inspect;
mod lease;
mod maintain;
mod states;
mod wake;

pub use backoff::Backoff;
pub use cancel::{cancel, Cancelled};
pub use claim::{claim, Claim, ClaimedJob};
pub use enqueue::{enqueue, enqueue_many, release_held, Batch, JobId, NewJob};
pub use error::QueueError;
pub use finish::{complete, complete_many, fail, snooze, Failed, Finished, Snoozed};
pub use inspect::{get, stats, Job, QueueStats};
pub use lease::{heartbeat, LeaseToken};
pub use maintain::{maintain, reclaim_expired, Maintenance, Reclaimed};
pub use states::{FINISHED, WAITING};
pub use wake::{Notifier, Wakeups, CHANNEL};

/// The migrations of the whole appliance, embedded in the binary.
pub use crate::store::MIGRATOR;
