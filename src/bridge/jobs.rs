//! The calls on one job: read it, hold it (heartbeat, progress), finish it
//! (complete, fail) and, for admins, cancel it. Each change commits with
//! its audit row and the analysis status it causes.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::body;
use super::checks::{parse_job_id, queue_error, require_external};
use crate::analyses::db_error;
use crate::analyses::jobs::{self, Outcome};
use crate::analyses::status::KeyRequest;
use crate::api_error::ApiError;
use crate::auth::{allow, Caller, Visibility};
use crate::queue::{self, Backoff};
use crate::worker::state::AppState;

pub async fn get_job(
    State(app): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<queue::Job>, ApiError> {
    caller.require(allow::BRIDGE)?;
    let id = parse_job_id(&raw)?;
    let mut conn = app.db.acquire().await.map_err(db_error)?;
    // A job carries its analysis's sample and results: it is seen by those
    // who may see the analysis, and otherwise answers as missing.
    let vis = Visibility::of(&caller);
    let visible: Option<bool> = sqlx::query_scalar(&format!(
        "SELECT j.analysis_id IS NULL OR EXISTS (
                SELECT 1 FROM analyses a WHERE a.id = j.analysis_id AND {})
           FROM jobs j WHERE j.id = $1",
        vis.sql("a", 2)
    ))
    .bind(id)
    .bind(vis.key_id())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    if visible != Some(true) {
        return Err(queue_error(queue::QueueError::NotFound));
    }
    Ok(Json(queue::get(&mut conn, id).await.map_err(queue_error)?))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatBody {
    lease_token: Option<String>,
    lease_seconds: Option<f64>,
    progress: Option<Value>,
}

pub async fn heartbeat(
    State(app): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    req_body: Body,
) -> Result<Json<Value>, ApiError> {
    caller.require(allow::BRIDGE)?;
    let id = parse_job_id(&raw)?;
    let b: HeartbeatBody = body::json(req_body, body::SMALL_LIMIT).await?;
    hold(&app, id, b).await
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressBody {
    lease_token: Option<String>,
    progress: Option<Value>,
}

/// Progress is a heartbeat that carries a document: readers see it on the
/// analysis, and it keeps the lease alive.
pub async fn progress(
    State(app): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    req_body: Body,
) -> Result<Json<Value>, ApiError> {
    caller.require(allow::BRIDGE)?;
    let id = parse_job_id(&raw)?;
    let b: ProgressBody = body::json(req_body, body::SMALL_LIMIT).await?;
    let Some(progress) = b.progress else {
        return Err(missing("progress"));
    };
    hold(
        &app,
        id,
        HeartbeatBody {
            lease_token: b.lease_token,
            lease_seconds: None,
            progress: Some(progress),
        },
    )
    .await
}

async fn hold(app: &AppState, id: Uuid, b: HeartbeatBody) -> Result<Json<Value>, ApiError> {
    let token = b.lease_token.ok_or_else(|| missing("lease_token"))?;
    if let Some(progress) = &b.progress {
        body::storable("progress", progress)?;
    }
    require_external(app, id).await?;
    let q = &app.settings.queue;
    let lease = b.lease_seconds.unwrap_or(q.lease_seconds as f64);
    if !(1.0..=q.max_lease_seconds as f64).contains(&lease) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_lease",
            format!(
                "lease_seconds must be 1 to {}, not {lease}",
                q.max_lease_seconds
            ),
        ));
    }
    let mut conn = app.db.acquire().await.map_err(db_error)?;
    let until = queue::heartbeat(
        &mut conn,
        id,
        &token,
        Duration::from_secs_f64(lease),
        b.progress,
    )
    .await
    .map_err(queue_error)?;
    Ok(Json(json!({ "id": id, "lease_until": until })))
}

fn missing(field: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "missing_field",
        format!("the body needs {field:?}"),
    )
}

fn outcome_json(o: Outcome) -> Value {
    let mut out = json!({ "ok": true });
    if let Some(to) = o.analysis_status {
        out["analysis_status"] = json!(to);
    }
    out
}

pub async fn complete(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(raw): Path<String>,
    req_body: Body,
) -> Result<Json<Value>, ApiError> {
    caller.require(allow::BRIDGE)?;
    let id = parse_job_id(&raw)?;
    let b: CompleteBody = body::json(req_body, body::RESULT_LIMIT).await?;
    let token = b.lease_token.ok_or_else(|| missing("lease_token"))?;
    let result = b.result.unwrap_or(Value::Null);
    body::storable("result", &result)?;
    require_external(&app, id).await?;
    let by = KeyRequest::new(&caller, &headers);
    let outcome = jobs::complete(&app.db, &app.notifier, id, &token, result, &by.actor())
        .await
        .map_err(queue_error)?;
    Ok(Json(outcome_json(outcome)))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    lease_token: Option<String>,
    result: Option<Value>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailBody {
    lease_token: Option<String>,
    error: Option<Value>,
    /// Whether another attempt may succeed; default true.
    retry: Option<bool>,
}

pub async fn fail(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(raw): Path<String>,
    req_body: Body,
) -> Result<Json<Value>, ApiError> {
    caller.require(allow::BRIDGE)?;
    let id = parse_job_id(&raw)?;
    let b: FailBody = body::json(req_body, body::SMALL_LIMIT).await?;
    let token = b.lease_token.ok_or_else(|| missing("lease_token"))?;
    let error = b.error.ok_or_else(|| missing("error"))?;
    body::storable("error", &error)?;
    require_external(&app, id).await?;
    let retry = b.retry.unwrap_or(true);
    let by = KeyRequest::new(&caller, &headers);
    let backoff = Backoff::from_settings(&app.settings.queue);
    let (failed, outcome) = jobs::fail(
        &app.db,
        &app.notifier,
        id,
        &token,
        jobs::Failure {
            error,
            retry,
            backoff: &backoff,
        },
        &by.actor(),
    )
    .await
    .map_err(queue_error)?;
    let mut out = outcome_json(outcome);
    out["state"] = json!(failed.state);
    if failed.state == "retryable" {
        out["run_at"] = json!(failed.run_at);
    }
    Ok(Json(out))
}

pub async fn cancel(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(allow::ADMIN)?;
    let id = parse_job_id(&raw)?;
    let by = KeyRequest::new(&caller, &headers);
    let (cancelled, outcome) = jobs::cancel(&app.db, &app.notifier, id, &by.actor())
        .await
        .map_err(queue_error)?;
    let mut out = outcome_json(outcome);
    out["state"] = json!("cancelled");
    out["previous"] = json!(cancelled.previous);
    Ok(Json(out))
}
