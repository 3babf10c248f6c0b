//! What every request handler of a worker shares (`Shared`): built once
//! by the server (`server`) and handed to each request (`request`), apart
//! from both so that neither imports the other for it.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::accesslog::AccessLogFormat;
use crate::config::Settings;
use crate::scoreboard::{Scoreboard, Slot};
use crate::shutdown::Trigger;

/// What every request handler of this worker shares.
pub struct Shared {
    pub settings: Settings,
    pub board: Arc<Scoreboard>,
    pub slot_index: usize,
    pub access: AccessLogFormat,
    pub router: axum::Router,
    pub seq: AtomicU64,
    pub max_requests: u64,
    pub trigger: Trigger,
    pub pid: u32,
    /// How recent a peer's beat must be for it to take part in spreading
    /// connections (`scoreboard::live_within_ms`).
    pub live_within_ms: u64,
}

impl Shared {
    pub fn slot(&self) -> &Slot {
        self.board.slot(self.slot_index)
    }
}
