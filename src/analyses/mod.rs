//! Reading what intake recorded: one analysis with its sample, hashes and
//! matches (`GET /v1/analyses/{id}`, for callers `Visibility` lets see
//! it), its audit trail (`GET /v1/audit`, admins only),
//! and readiness (`GET /readyz`), which checks every dependency a
//! submission needs.

pub mod jobs;
pub mod status;
pub mod upkeep;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sqlx::types::Json as DbJson;
use sqlx::Row;
use uuid::Uuid;

use crate::api_error::unavailable;
use crate::api_error::ApiError;
use crate::auth::{allow, Caller, Visibility};
use crate::export::view::{AnalysisRow, COLUMNS, FROM};
use crate::worker::state::AppState;

/// An analysis id from a path or query: a UUID, else 400 `invalid_id`.
pub fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    crate::api_error::parse_uuid(raw, "an analysis id")
}

pub fn db_error(e: sqlx::Error) -> ApiError {
    if crate::store::is_unavailable(&e) {
        unavailable("the database", e)
    } else {
        tracing::error!(error = %e, "query failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "query_failed",
            "the query failed",
        )
    }
}

pub async fn get_analysis(
    State(app): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(allow::READ)?;
    let id = parse_id(&raw)?;
    // One snapshot for the analysis and its jobs: a job never shows as
    // completed without the result it put on the analysis.
    let mut tx = app.db.begin().await.map_err(db_error)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    // One that the caller may not see answers as one that does not exist,
    // so ids cannot be probed.
    let vis = Visibility::of(&caller);
    let row = sqlx::query_as::<_, AnalysisRow>(&format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE a.id = $1 AND {}",
        vis.sql("a", 2)
    ))
    .bind(id)
    .bind(vis.key_id())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?
    .ok_or_else(|| ApiError::not_found(format!("no analysis {id}")))?;
    // Live and recently finished jobs; pruned ones left their results above.
    let jobs: Vec<Value> =
        sqlx::query_as::<_, (Uuid, String, String, String, i32, i32, Option<Value>, Value)>(
            "SELECT id, queue, kind, state, attempt, max_attempts, progress, errors
           FROM jobs WHERE analysis_id = $1 ORDER BY created_at, id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?
        .into_iter()
        .map(
            |(job_id, queue, kind, state, attempt, max_attempts, progress, errors)| {
                json!({
                    "id": job_id, "queue": queue, "kind": kind, "state": state,
                    "attempt": attempt, "max_attempts": max_attempts,
                    "progress": progress, "errors": errors,
                })
            },
        )
        .collect();
    let mut out = row.to_json();
    out["jobs"] = Value::Array(jobs);
    Ok(Json(out))
}

pub async fn get_audit(
    State(app): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    caller.require(allow::ADMIN)?;
    let params = crate::export::params::Params::parse(raw.as_deref(), &["analysis_id"])?;
    let raw_id = params.get("analysis_id").ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_parameter",
            "analysis_id is required",
        )
    })?;
    let id = parse_id(raw_id)?;
    let rows = sqlx::query(
        "SELECT id, at, actor, event, details, request_id, node FROM analysis_audit_log
         WHERE analysis_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&app.db)
    .await
    .map_err(db_error)?;
    let entries: Vec<Value> = rows
        .iter()
        .map(|r| {
            let at: chrono::DateTime<chrono::Utc> = r.get("at");
            let details: DbJson<Value> = r.get("details");
            json!({
                "id": r.get::<i64, _>("id"),
                "at": at,
                "actor": r.get::<String, _>("actor"),
                "event": r.get::<String, _>("event"),
                "details": details.0,
                "request_id": r.get::<Option<String>, _>("request_id"),
                "node": r.get::<Option<String>, _>("node"),
            })
        })
        .collect();
    Ok(Json(json!({ "analysis_id": id, "entries": entries })))
}

/// Whether a recorder (`crate::recorder`) is running and beating, or
/// starting: every submission goes through it. While one replaces another
/// (HUP, a crash) submissions wait in its socket's backlog, so a recorder
/// booting counts.
fn recorder_alive(board: &crate::scoreboard::Scoreboard, server: &crate::config::Server) -> bool {
    use crate::scoreboard::{live_within_ms, monotonic_ms, SlotState, ROLE_RECORDER};
    use std::sync::atomic::Ordering::Relaxed;
    let now = monotonic_ms();
    let within = live_within_ms(server);
    board.child_slots().map(|i| board.slot(i)).any(|s| {
        s.role.load(Relaxed) == ROLE_RECORDER
            && matches!(s.state(), SlotState::Ready | SlotState::Booting)
            && s.is_live(now, within)
    })
}

/// Tries of the readiness query when a pooled connection turns out dead.
const READYZ_TRIES: usize = 3;

/// Ready means a submission would succeed now: database reachable and
/// migrated, reached as the service's role (`store::role`), rules loaded,
/// the sample store taking writes (the quarantine, or the bucket), a
/// recorder running.
pub async fn readyz(State(app): State<AppState>) -> Response {
    let not_ready = |check: &str, message: String| {
        let mut resp = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "not_ready", "check": check, "message": message })),
        )
            .into_response();
        resp.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        );
        resp
    };
    let latest = crate::store::latest_migration();
    // Pooled connections are not pinged before use, so after an outage
    // each one that lived through it fails its next statement. A probe's
    // query is safe to repeat: one dead connection is not an unreachable
    // database.
    let query = || {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT max(version) FROM _sqlx_migrations WHERE success",
        )
        .fetch_one(&app.db)
    };
    let mut applied = query().await;
    for _ in 1..READYZ_TRIES {
        match &applied {
            Err(e) if crate::store::is_dead_connection(e) => applied = query().await,
            _ => break,
        }
    }
    // The probe is unauthenticated: it names the check that failed and
    // keeps the details (driver errors, versions, paths) for the log.
    match applied {
        Err(e) => {
            tracing::warn!(error = %e, "readyz: cannot query the database");
            return not_ready("database", "the database cannot be queried".into());
        }
        Ok(v) if v.unwrap_or(0) < latest => {
            tracing::warn!(
                applied = v,
                needed = latest,
                "readyz: the schema is older than this binary; run `sandgnat migrate`"
            );
            return not_ready(
                "database",
                "the database schema is older than this binary needs".into(),
            );
        }
        Ok(_) => {}
    }
    if !app.settings.database.allow_owner {
        match crate::store::role::standing(&app.db).await {
            Err(e) => {
                tracing::warn!(error = %e, "readyz: cannot read the database role");
                return not_ready("database", "the database cannot be queried".into());
            }
            Ok(standing) => {
                if let Some(by) = crate::store::role::refusal(false, &standing) {
                    tracing::error!(role = %by, "readyz: {}", crate::store::role::FIX);
                    return not_ready("database_role", crate::store::role::FIX.into());
                }
            }
        }
    }
    if app.rules.count() == 0 {
        return not_ready("rules", "no YARA rules are loaded".into());
    }
    if let Err(e) = app.store.check_ready().await {
        tracing::warn!(error = %e, backend = app.store.kind(), "readyz: the sample store does not take writes");
        return if app.store.is_local() {
            not_ready("quarantine", "the quarantine is not writable".into())
        } else {
            not_ready(
                "store",
                "the sample store cannot be reached or does not take this node's writes".into(),
            )
        };
    }
    if !recorder_alive(&app.board, &app.settings.server) {
        return not_ready(
            "recorder",
            "no recorder process is running; submissions wait for the master to start one".into(),
        );
    }
    let rules_error = app.board.header().rules_error.load();
    // Reported, not a reason to refuse traffic: see `store::durability`.
    let (durable, durability) = match crate::store::durability::published(&app.board) {
        Some(crate::store::durability::Durability::Durable) => (Some(true), None),
        Some(crate::store::durability::Durability::NotDurable(why)) => (Some(false), Some(why)),
        None => (None, None),
    };
    Json(json!({
        "status": "ready",
        "durable": durable,
        "durability": durability,
        "rules": {
            "loaded": app.rules.count(),
            // A failed recompile on HUP keeps the running rules; say so.
            "last_reload_error": (!rules_error.is_empty()).then_some(rules_error),
        },
    }))
    .into_response()
}
