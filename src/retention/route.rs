//! `DELETE /v1/samples/{sha256}/content` (admin keys only): purges one
//! sample's bytes now (`purge`), whatever `retention.sample_days` says;
//! its row, analyses and audit trail stay. Purging a purged sample again
//! changes nothing and answers the same.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::{purge, PurgeError, Purged};
use crate::analyses::db_error;
use crate::analyses::status::KeyRequest;
use crate::api_error::ApiError;
use crate::auth::{allow, Caller};
use crate::worker::state::AppState;

pub async fn purge_content(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(sha256): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(allow::ADMIN)?;
    crate::export::download::sample_name(&sha256)?;
    let by = KeyRequest::new(&caller, &headers);
    let why = json!({ "reason": "request", "key": caller.name });
    match purge(&app.db, &app.store, &sha256, &by.actor(), why).await {
        Ok(purged) => Ok(Json(answer(&sha256, &purged))),
        Err(e) => Err(refusal(e)),
    }
}

/// The answer to a purge, the API's and `sandgnat samples purge`'s.
pub fn answer(sha256: &str, purged: &Purged) -> Value {
    let (purged_at, now) = match purged {
        Purged::Now { purged_at, .. } => (Some(*purged_at), true),
        Purged::Already { purged_at } => (*purged_at, false),
    };
    json!({
        "sha256": sha256,
        "content_purged": true,
        "purged_at": purged_at,
        "purged_now": now,
    })
}

fn refusal(e: PurgeError) -> ApiError {
    match e {
        PurgeError::Unknown(sha256) => ApiError::not_found(format!("no sample {sha256}")),
        in_use @ PurgeError::InUse { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "sample_in_use",
            format!(
                "{in_use}; they read its bytes: let them finish, or cancel them \
                 (POST /v1/jobs/{{id}}/cancel), then purge again"
            ),
        ),
        PurgeError::Database(e) => db_error(e),
    }
}
