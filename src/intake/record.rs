//! The one transaction that makes a submission durable: the sample (new,
//! or seen again), the analysis, its `submitted` and `scanned` audit rows,
//! and the analysis jobs. Nothing is visible until it all commits.

use serde_json::json;
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use super::metadata::Metadata;
use crate::scan::RuleMatch;

pub struct Submission<'a> {
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
    pub size: u64,
    pub file_type: String,
    pub storage_path: String,
    pub filename: String,
    pub meta: Metadata,
    pub key_id: i64,
    pub key_name: String,
    pub client_ip: Option<String>,
    pub request_id: String,
    pub matches: &'a [RuleMatch],
    pub scan_error: Option<&'a str>,
}

pub async fn record(db: &PgPool, s: &Submission<'_>) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO samples (sha256, sha1, md5, size, file_type, storage_path)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (sha256) DO UPDATE SET last_seen = now()",
    )
    .bind(&s.sha256)
    .bind(&s.sha1)
    .bind(&s.md5)
    .bind(s.size as i64)
    .bind(&s.file_type)
    .bind(&s.storage_path)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO analyses (id, sample_sha256, api_key_id, client_ip, filename, tags, tlp,
                               priority, yara_matches, callback_url, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(id)
    .bind(&s.sha256)
    .bind(s.key_id)
    .bind(&s.client_ip)
    .bind(&s.filename)
    .bind(&s.meta.tags)
    .bind(&s.meta.tlp)
    .bind(s.meta.priority)
    .bind(Json(s.matches))
    .bind(&s.meta.callback_url)
    .bind(&s.request_id)
    .execute(&mut *tx)
    .await?;
    let actor = format!("key:{}", s.key_name);
    let submitted = json!({
        "filename": s.filename,
        "size": s.size,
        "sha256": s.sha256,
        "client_ip": s.client_ip,
        "tags": s.meta.tags,
        "tlp": s.meta.tlp,
        "priority": s.meta.priority,
    });
    let scanned = json!({
        "rules": s.matches.iter().map(|m| format!("{}:{}", m.namespace, m.rule)).collect::<Vec<_>>(),
        "error": s.scan_error,
    });
    for (actor, event, details) in [
        (actor.as_str(), "submitted", submitted),
        ("sandgnat", "scanned", scanned),
    ] {
        sqlx::query(
            "INSERT INTO analysis_audit_log (analysis_id, actor, event, details, request_id)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(actor)
        .bind(event)
        .bind(Json(details))
        .bind(&s.request_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}
