//! What one worker knows about itself for the status page, kept in the
//! worker's state (`crate::worker::state`) and read by the page's
//! snapshot; apart from the page so that the worker's state need not
//! import its routes.

use chrono::{DateTime, Utc};

use super::rates;

/// What one worker knows about itself that the page shows: the rules it
/// loaded, its traffic samples, and which socket is the workers'.
pub struct Local {
    /// A rules directory, or "bundled".
    pub rules_source: String,
    pub rules_count: usize,
    /// SHA-256 of the compiled rules, the same in every worker of a
    /// generation.
    pub rules_digest: String,
    pub rules_loaded_at: DateTime<Utc>,
    pub rates: rates::Rates,
    /// The workers' socket's inode, to read its accept queue by.
    pub workers_socket: Option<u32>,
}
