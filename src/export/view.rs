//! One analysis as the read routes show it: the row, the columns that make
//! it, and its JSON form. Lists, the feed, lookups and STIX all read
//! through this, so an analysis looks the same wherever it is read.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::types::Json;
use uuid::Uuid;

/// The select list for `FROM`; column names match `AnalysisRow`'s fields.
pub const COLUMNS: &str = "a.id, a.status, a.filename, a.tags, a.tlp, a.priority, \
     a.yara_matches AS yara, a.results, a.created_at, a.updated_at, \
     a.api_key_id AS submitted_by, a.yara_cached, a.yara_rules_digest, a.node, \
     s.sha256, s.sha1, s.md5, s.size, s.file_type";

/// Analyses with their samples; the analysis is `a`, the sample `s`.
pub const FROM: &str = "analyses a JOIN samples s ON s.sha256 = a.sample_sha256";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AnalysisRow {
    pub id: Uuid,
    pub status: String,
    pub filename: Option<String>,
    pub tags: Vec<String>,
    pub tlp: String,
    pub priority: i16,
    pub yara: Json<Value>,
    pub results: Json<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub submitted_by: Option<i64>,
    /// The YARA matches were an earlier analysis's (`crate::intake::known`).
    pub yara_cached: bool,
    /// The compiled rules that gave the matches; `None` if the scan failed.
    pub yara_rules_digest: Option<String>,
    /// The node that took the submission (`node.name`); `None` for
    /// analyses older than the column.
    pub node: Option<String>,
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
    pub size: i64,
    pub file_type: String,
}

impl AnalysisRow {
    /// The analysis as JSON, without its jobs (`GET /v1/analyses/{id}`
    /// adds them). Never says which key submitted it.
    pub fn to_json(&self) -> Value {
        json!({
            "analysis_id": self.id,
            "status": self.status,
            "filename": self.filename,
            "tags": self.tags,
            "tlp": self.tlp,
            "priority": self.priority,
            "sha256": self.sha256,
            "sha1": self.sha1,
            "md5": self.md5,
            "size": self.size,
            "file_type": self.file_type,
            "yara": self.yara.0,
            "yara_cached": self.yara_cached,
            "yara_rules_digest": self.yara_rules_digest,
            "results": self.results.0,
            "node": self.node,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }

    /// The YARA rule names that matched, as `namespace:rule` when the
    /// namespace is not the default one.
    pub fn rule_names(&self) -> Vec<String> {
        self.yara
            .0
            .as_array()
            .map(|matches| {
                matches
                    .iter()
                    .filter_map(|m| {
                        let rule = m.get("rule")?.as_str()?;
                        Some(match m.get("namespace").and_then(Value::as_str) {
                            Some(ns) if !ns.is_empty() && ns != "default" => format!("{ns}:{rule}"),
                            _ => rule.to_owned(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
