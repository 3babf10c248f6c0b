//! What every route handler of a worker can reach: settings, the database
//! pool, the API keys, the loaded YARA rules, the sample store and the
//! spool.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use sqlx::PgPool;

use crate::auth::{HasKeyRing, KeyRing};
use crate::config::Settings;
use crate::scan::RuleSet;
use crate::scoreboard::Scoreboard;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub settings: Settings,
    pub db: PgPool,
    pub keys: KeyRing,
    pub rules: Arc<RuleSet>,
    /// Where accepted samples' bytes live (`crate::storage`).
    pub store: crate::storage::SampleStore,
    pub spool: PathBuf,
    /// Memory for samples received in memory, shared by this worker's
    /// uploads.
    pub memory: Arc<crate::intake::spool::MemoryBudget>,
    /// Where submissions are committed (in groups, under load).
    pub recorder: crate::recorder::client::Recorder,
    pub board: Arc<Scoreboard>,
    /// Wakes claimers after a commit that enqueued jobs.
    pub notifier: crate::queue::Notifier,
    /// Where long-polling claims wait.
    pub wakeups: crate::queue::Wakeups,
    /// What the status page shows about this worker itself.
    pub status: crate::status::local::Local,
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        AppState(Arc::new(inner))
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl HasKeyRing for AppState {
    fn key_ring(&self) -> &KeyRing {
        &self.0.keys
    }

    fn key_db(&self) -> &PgPool {
        &self.0.db
    }
}
