//! Reusing a stored YARA answer instead of scanning again. A scan's
//! answer depends on the bytes, the rule set and the external variables,
//! which come from the submitted name and the bytes alone
//! (`crate::scan::externals`). So an earlier analysis of the same sample,
//! submitted under the same name and scanned by the rule set with the same
//! digest, holds the answer a scan would give now.
//!
//! Only analyses the caller may read are reused (`Visibility`): the
//! answer says `yara_cached`, and that must not tell a submitter key that
//! somebody else sent these bytes (a sample's author, with a stolen key,
//! asking whether the defenders have it). Only committed analyses are
//! seen, and an analysis row commits with its matches in one statement
//! (`record.rs`), so a submission racing the first one's commit scans
//! again rather than reading half an answer.

use sqlx::types::Json;
use sqlx::PgPool;

use crate::auth::{Caller, Visibility};
use crate::scan::RuleMatch;

/// What a stored answer is looked up by.
pub struct Key<'a> {
    pub sha256: &'a str,
    pub filename: &'a str,
    pub rules_digest: &'a str,
}

/// The matches of the newest scanned analysis for `key` that `caller` may
/// read, or `None` (none, or the database did not answer: then the sample
/// is scanned, which is always right).
pub async fn stored_matches(db: &PgPool, caller: &Caller, key: &Key<'_>) -> Option<Vec<RuleMatch>> {
    let vis = Visibility::of(caller);
    let found: Result<Option<Json<Vec<RuleMatch>>>, sqlx::Error> = sqlx::query_scalar(&format!(
        "SELECT a.yara_matches FROM analyses a
          WHERE a.sample_sha256 = $1 AND a.yara_rules_digest = $2 AND a.filename = $3
            AND a.yara_rules_digest IS NOT NULL AND NOT a.yara_cached AND {}
          ORDER BY a.created_at DESC LIMIT 1",
        vis.sql("a", 4)
    ))
    .bind(key.sha256)
    .bind(key.rules_digest)
    .bind(key.filename)
    .bind(vis.key_id())
    .fetch_optional(db)
    .await;
    match found {
        Ok(m) => m.map(|Json(m)| m),
        Err(e) => {
            tracing::info!(error = %e, sha256 = key.sha256, "cannot look up a stored YARA answer; scanning");
            None
        }
    }
}
