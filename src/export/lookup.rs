//! `GET /v1/samples/{hash}`: what is known of a sample, by md5, sha1 or
//! sha256, with its newest analyses. A sample is known to a caller only
//! through the analyses it may see: first and last seen and the names it
//! was submitted under come from those, so a lookup never tells a
//! submitter that someone else submitted the same bytes. It also says
//! whether the sample's bytes were purged (`crate::retention`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use sqlx::{Postgres, QueryBuilder};

use super::params::hash_kind;
use super::view::{AnalysisRow, COLUMNS, FROM};
use crate::analyses::db_error;
use crate::api_error::ApiError;
use crate::auth::{allow, Caller, Visibility};
use crate::worker::state::AppState;

/// Analyses shown inline; the rest are a link away.
const NEWEST: i64 = 20;
/// File names shown at most.
const NAMES: i64 = 50;

pub async fn lookup(
    State(app): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(allow::READ)?;
    let vis = Visibility::of(&caller);
    let (column, hash) = hash_kind(&raw)?;
    let not_found = || ApiError::not_found(format!("no sample {hash}"));
    // md5 and sha1 collide on purpose in the wild: more than one sample
    // may answer, and only visible ones count.
    let mut qb = QueryBuilder::<Postgres>::new(format!(
        "SELECT s.sha256, s.content_purged, s.purged_at FROM samples s WHERE s.{column} = "
    ));
    qb.push_bind(&hash)
        .push(" AND EXISTS (SELECT 1 FROM analyses a WHERE a.sample_sha256 = s.sha256 AND ");
    vis.push(&mut qb, "a");
    qb.push(") ORDER BY s.sha256 LIMIT 10");
    type Found = (String, bool, Option<chrono::DateTime<chrono::Utc>>);
    let found: Vec<Found> = qb
        .build_query_as()
        .fetch_all(&app.db)
        .await
        .map_err(db_error)?;
    let (sha256, content_purged, purged_at) = match found.as_slice() {
        [] => return Err(not_found()),
        [one] => one.clone(),
        many => {
            let many: Vec<&str> = many.iter().map(|(sha, _, _)| sha.as_str()).collect();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "ambiguous_hash",
                format!(
                    "{} samples have the {column} {hash}: look them up by sha256 ({})",
                    many.len(),
                    many.join(", ")
                ),
            ));
        }
    };

    let mut qb = QueryBuilder::<Postgres>::new(format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE a.sample_sha256 = "
    ));
    qb.push_bind(&sha256).push(" AND ");
    vis.push(&mut qb, "a");
    qb.push(" ORDER BY a.created_at DESC, a.id DESC LIMIT ")
        .push_bind(NEWEST + 1);
    let mut analyses: Vec<AnalysisRow> = qb
        .build_query_as()
        .fetch_all(&app.db)
        .await
        .map_err(db_error)?;
    let more = analyses.len() as i64 > NEWEST;
    analyses.truncate(NEWEST as usize);
    let Some(newest) = analyses.first() else {
        return Err(not_found());
    };

    let mut qb = QueryBuilder::<Postgres>::new(
        "SELECT min(a.created_at), max(a.created_at) FROM analyses a WHERE a.sample_sha256 = ",
    );
    qb.push_bind(&sha256).push(" AND ");
    vis.push(&mut qb, "a");
    let (first_seen, last_seen): (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = qb
        .build_query_as()
        .fetch_one(&app.db)
        .await
        .map_err(db_error)?;

    // The names of the oldest analyses only: a sample submitted a million
    // times must not cost a million rows per lookup.
    let mut qb = QueryBuilder::<Postgres>::new(
        "SELECT filename FROM (SELECT a.filename, a.created_at FROM analyses a
          WHERE a.filename <> '' AND a.sample_sha256 = ",
    );
    qb.push_bind(&sha256).push(" AND ");
    vis.push(&mut qb, "a");
    qb.push(
        " ORDER BY a.created_at LIMIT 10000) t GROUP BY filename ORDER BY min(created_at) LIMIT ",
    )
    .push_bind(NAMES);
    let names: Vec<String> = qb
        .build_query_scalar()
        .fetch_all(&app.db)
        .await
        .map_err(db_error)?;

    Ok(Json(json!({
        "sha256": newest.sha256,
        "sha1": newest.sha1,
        "md5": newest.md5,
        "size": newest.size,
        "file_type": newest.file_type,
        "first_seen": first_seen,
        "last_seen": last_seen,
        "file_names": names,
        "content_purged": content_purged,
        "purged_at": purged_at,
        "analyses": analyses.iter().map(AnalysisRow::to_json).collect::<Vec<_>>(),
        "more_analyses": more,
        "analyses_url": format!("/v1/analyses?sha256={sha256}"),
    })))
}
