//! `GET /v1/analyses/{id}/stix`: one analysis as a STIX 2.1 bundle, for
//! the callers `auth::Visibility` lets see it. Reads the analysis and the
//! name its sample goes by, and leaves the document to `stix`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sqlx::PgPool;
use uuid::Uuid;

use super::stix::{self, Tlp};
use super::view::{AnalysisRow, COLUMNS, FROM};
use crate::analyses::db_error;
use crate::api_error::ApiError;
use crate::auth::{allow, Caller, Visibility};
use crate::worker::state::AppState;

/// The STIX 2.1 media type (STIX 2.1, 1.6 / IANA).
pub const MEDIA_TYPE: &str = "application/stix+json;version=2.1";

pub async fn get_stix(
    State(app): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(allow::READ)?;
    let id = crate::analyses::parse_id(&raw)?;
    let vis = Visibility::of(&caller);
    // Not visible and missing answer alike, so ids cannot be probed.
    let row: AnalysisRow = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE a.id = $1 AND {}",
        vis.sql("a", 2)
    ))
    .bind(id)
    .bind(vis.key_id())
    .fetch_optional(&app.db)
    .await
    .map_err(db_error)?
    .ok_or_else(|| ApiError::not_found(format!("no analysis {id}")))?;
    let name = sample_name(&app.db, &row, &vis).await?;
    let objects = stix::objects(&row, name.as_deref()).map_err(|e| {
        tracing::error!(analysis = %id, error = %e, "cannot express the analysis in STIX");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stix_failed",
            "the analysis cannot be expressed in STIX",
        )
    })?;
    let body = stix::bundle(Uuid::new_v4(), objects);
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    Ok(resp)
}

/// The name the sample's `file` carries: the file name of the sample's
/// first analysis that had one, so every analysis of the sample gives the
/// `file` the same name and so the same id.
pub async fn sample_name(
    db: &PgPool,
    row: &AnalysisRow,
    vis: &Visibility,
) -> Result<Option<String>, ApiError> {
    let first: Option<FirstName> = sqlx::query_as(
        "SELECT filename, tlp, api_key_id FROM analyses
          WHERE sample_sha256 = $1 AND filename <> ''
          ORDER BY created_at, id LIMIT 1",
    )
    .bind(&row.sha256)
    .fetch_optional(db)
    .await
    .map_err(db_error)?;
    Ok(shown_name(first, &row.tlp, vis))
}

/// The sample's first named analysis: file name, TLP, submitting key.
pub type FirstName = (String, String, Option<i64>);

/// Whether the first name may be shown in an analysis with TLP `tlp`.
/// That name was given by whoever submitted first, so it is shown only
/// where it tells nothing new: when this caller may read that analysis,
/// and when its TLP is no stricter than this one's (a TLP:CLEAR bundle must
/// not carry an AMBER submitter's file name). Otherwise the `file` has no
/// name; its id is then the one every producer computes from the hashes
/// alone, still the same for every such bundle.
pub fn shown_name(first: Option<FirstName>, tlp: &str, vis: &Visibility) -> Option<String> {
    let (name, first_tlp, submitted_by) = first?;
    let no_stricter = Tlp::parse(&first_tlp)? <= Tlp::parse(tlp)?;
    (no_stricter && vis.allows(&first_tlp, submitted_by)).then_some(name)
}
