//! `GET /v1/analyses`: analyses newest first, filtered, a page at a time.
//! Pages are keyset pages (`created_at, id` below the cursor), so an
//! analysis that arrives while a client pages goes above the first page
//! and never shifts what the next page holds. Each filter leads an index
//! (migration `..._export.sql`).

use axum::extract::{RawQuery, State};
use axum::Json;
use serde_json::{json, Value};
use sqlx::{Postgres, QueryBuilder};

use super::cursor::ListPosition;
use super::params::{bad, hash_kind, Params};
use super::view::{AnalysisRow, COLUMNS};
use crate::analyses::db_error;
use crate::api_error::ApiError;
use crate::auth::{allow, Caller, Visibility};
use crate::worker::state::AppState;

const KNOWN: &[&str] = &[
    "sha256",
    "sha1",
    "md5",
    "rule",
    "status",
    "tlp",
    "tag",
    "submitted_after",
    "submitted_before",
    "limit",
    "cursor",
];

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

const STATUSES: &[&str] = &["queued", "running", "completed", "failed"];
pub const TLPS: &[&str] = &["clear", "white", "green", "amber", "amber+strict", "red"];

pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    caller.require(allow::READ)?;
    let params = Params::parse(raw.as_deref(), KNOWN)?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    // One row past the page says whether there is a next one.
    let mut qb = query(&params, &Visibility::of(&caller), limit + 1)?;
    let mut rows: Vec<AnalysisRow> = qb
        .build_query_as()
        .fetch_all(&app.db)
        .await
        .map_err(db_error)?;
    let next = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        let last = &rows[limit - 1];
        let cursor = ListPosition {
            created_at: last.created_at,
            id: last.id,
        }
        .encode();
        let rest = params.without_cursor();
        let sep = if rest.is_empty() { "" } else { "&" };
        format!("/v1/analyses?{rest}{sep}cursor={cursor}")
    });
    Ok(Json(json!({
        "analyses": rows.iter().map(AnalysisRow::to_json).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// The newest `limit` analyses that pass every filter in `params`.
pub fn query<'a>(
    params: &Params,
    vis: &Visibility,
    limit: usize,
) -> Result<QueryBuilder<'a, Postgres>, ApiError> {
    query_after(String::new(), params, vis, limit)
}

/// `query` after `head` (`EXPLAIN` in tests). The page is cut from
/// `analyses` alone and only then joined to its samples, so the join
/// costs a page of index probes however many rows the filters match.
fn query_after<'a>(
    head: String,
    params: &Params,
    vis: &Visibility,
    limit: usize,
) -> Result<QueryBuilder<'a, Postgres>, ApiError> {
    let mut qb = QueryBuilder::new(format!(
        "{head}SELECT {COLUMNS} FROM (SELECT * FROM analyses a WHERE "
    ));
    vis.push(&mut qb, "a");
    for column in ["sha256", "sha1", "md5"] {
        let Some(raw) = params.get(column) else {
            continue;
        };
        let (kind, hash) = hash_kind(raw)?;
        if kind != column {
            return Err(bad(
                "invalid_hash",
                format!("{column} must be a {column} hash, not a {kind}"),
            ));
        }
        if column == "sha256" {
            qb.push(" AND a.sample_sha256 = ").push_bind(hash);
        } else {
            qb.push(format!(
                " AND a.sample_sha256 IN (SELECT sha256 FROM samples WHERE {column} = "
            ))
            .push_bind(hash)
            .push(")");
        }
    }
    if let Some(rule) = params.get("rule") {
        // Printable ASCII only: rule names are, and a NUL would reach
        // the database as a query it cannot run.
        if rule.is_empty() || rule.len() > 256 || !rule.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(bad(
                "invalid_rule",
                "rule must be a YARA rule name (or namespace:rule), 1 to 256 printable ASCII characters".into(),
            ));
        }
        let wanted = match rule.split_once(':') {
            Some((ns, name)) => json!([{ "namespace": ns, "rule": name }]),
            None => json!([{ "rule": rule }]),
        };
        qb.push(" AND a.yara_matches @> ")
            .push_bind(sqlx::types::Json(wanted));
    }
    if let Some(status) = params.get("status") {
        one_of("status", status, STATUSES)?;
        qb.push(" AND a.status = ").push_bind(status.to_owned());
    }
    if let Some(tlp) = params.get("tlp") {
        let tlp = tlp.to_ascii_lowercase();
        one_of("tlp", &tlp, TLPS)?;
        qb.push(" AND a.tlp = ").push_bind(tlp);
    }
    if let Some(tag) = params.get("tag") {
        // What intake accepts as a tag; nothing else can match one.
        if tag.is_empty() || tag.len() > 64 || !tag.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "invalid_filter",
                "tag must be 1 to 64 printable ASCII characters without spaces".into(),
            ));
        }
        qb.push(" AND a.tags @> ARRAY[")
            .push_bind(tag.to_owned())
            .push("]::text[]");
    }
    if let Some(t) = params.time("submitted_after")? {
        qb.push(" AND a.created_at > ").push_bind(t);
    }
    if let Some(t) = params.time("submitted_before")? {
        qb.push(" AND a.created_at < ").push_bind(t);
    }
    if let Some(raw) = params.get("cursor") {
        let at = ListPosition::decode(raw).map_err(|e| bad("invalid_cursor", e.to_string()))?;
        // The plain bound lets the index range start at the cursor; the
        // row comparison breaks ties between equal timestamps.
        qb.push(" AND a.created_at <= ")
            .push_bind(at.created_at)
            .push(" AND (a.created_at, a.id) < (")
            .push_bind(at.created_at)
            .push(", ")
            .push_bind(at.id)
            .push(")");
    }
    qb.push(" ORDER BY a.created_at DESC, a.id DESC LIMIT ")
        .push_bind(limit as i64)
        .push(") a JOIN samples s ON s.sha256 = a.sample_sha256 ORDER BY a.created_at DESC, a.id DESC");
    Ok(qb)
}

fn one_of(name: &str, value: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(bad(
            "invalid_filter",
            format!(
                "{name} must be one of {}, not {value:?}",
                allowed.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Caller, Role};
    use sqlx::PgPool;

    /// Analyses enough that a sequential scan loses to any useful index:
    /// spread over four statuses, six TLPs, two keys, a few tags and rules.
    async fn fill(db: &PgPool, n: i64) {
        sqlx::raw_sql(
            "INSERT INTO api_keys (name, role, key_hash, key_prefix) VALUES
               ('a', 'submitter', decode(repeat('01', 32), 'hex'), 'sgk_'),
               ('b', 'reader', decode(repeat('02', 32), 'hex'), 'sgk_');",
        )
        .execute(db)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO samples (sha256, sha1, md5, size, file_type, storage_path)
             SELECT encode(sha256(i::text::bytea), 'hex'), encode(sha224(i::text::bytea), 'hex')::char(40),
                    md5(i::text), 1 + i, 'data', '' FROM generate_series(1, $1) i",
        )
        .bind(n)
        .execute(db)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO analyses (id, sample_sha256, api_key_id, filename, tags, tlp, status,
                                   yara_matches, created_at)
             SELECT gen_random_uuid(), encode(sha256(i::text::bytea), 'hex'),
                    (SELECT min(id) FROM api_keys) + i % 2, 'f' || i,
                    ARRAY['t' || i % 97], (ARRAY['clear','green','amber','amber+strict','red'])[1 + i % 5],
                    (ARRAY['queued','running','completed','failed'])[1 + i % 4],
                    jsonb_build_array(jsonb_build_object('rule', 'R' || i % 89, 'namespace', 'ns')),
                    now() - i * interval '1 second'
               FROM generate_series(1, $1) i",
        )
        .bind(n)
        .execute(db)
        .await
        .unwrap();
        sqlx::raw_sql("ANALYZE samples; ANALYZE analyses")
            .execute(db)
            .await
            .unwrap();
    }

    fn scans(plan: &serde_json::Value, out: &mut Vec<String>) {
        if let Some(kind) = plan.get("Node Type").and_then(|v| v.as_str()) {
            let rel = plan
                .get("Relation Name")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            out.push(format!("{kind} {rel}"));
        }
        for child in plan
            .get("Plans")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            scans(child, out);
        }
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn every_filter_is_served_by_an_index(db: PgPool) {
        fill(&db, 20_000).await;
        let key: i64 = sqlx::query_scalar("SELECT min(id) FROM api_keys")
            .fetch_one(&db)
            .await
            .unwrap();
        let sha256: String = sqlx::query_scalar("SELECT encode(sha256('77'::bytea), 'hex')")
            .fetch_one(&db)
            .await
            .unwrap();
        let (sha1, md5): (String, String) =
            sqlx::query_as("SELECT sha1, md5 FROM samples WHERE sha256 = $1")
                .bind(&sha256)
                .fetch_one(&db)
                .await
                .unwrap();
        let cursor = ListPosition {
            created_at: chrono::Utc::now() - chrono::Duration::seconds(10_000),
            id: uuid::Uuid::max(),
        }
        .encode();
        let cases = [
            format!("sha256={sha256}"),
            format!("sha1={sha1}"),
            format!("md5={md5}"),
            "rule=R7".to_string(),
            "rule=ns:R7".to_string(),
            "status=failed".to_string(),
            "tlp=green".to_string(),
            "tag=t5".to_string(),
            "submitted_after=2026-01-01T00:00:00Z".to_string(),
            "submitted_before=2020-01-01T00:00:00Z".to_string(),
            format!("cursor={cursor}"),
            String::new(),
        ];
        for role in [Role::Admin, Role::Reader, Role::Submitter] {
            let vis = Visibility::of(&Caller {
                key_id: key,
                name: "k".into(),
                role,
            });
            for case in &cases {
                let params = Params::parse(Some(case), KNOWN).unwrap();
                let mut qb =
                    query_after("EXPLAIN (FORMAT JSON) ".into(), &params, &vis, 101).unwrap();
                let plan: sqlx::types::Json<serde_json::Value> =
                    qb.build_query_scalar().fetch_one(&db).await.unwrap();
                let mut nodes = Vec::new();
                scans(&plan.0[0]["Plan"], &mut nodes);
                assert!(
                    !nodes.iter().any(|n| n.starts_with("Seq Scan")),
                    "{role:?} {case}: {nodes:?}"
                );
            }
        }
    }
}
