//! `POST /v1/queues/{queue}/claim`: up to `max_jobs` jobs, leased for
//! `lease_seconds`; with `wait_seconds`, a long poll that answers as soon
//! as work arrives (LISTEN/NOTIFY), checking at most once a second
//! otherwise, and answers `{"jobs": []}` when the wait runs out.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body;
use super::checks::{internal_queue, queue_error, QUEUES};
use crate::analyses::jobs;
use crate::api_error::ApiError;
use crate::auth::{allow, Caller};
use crate::queue::{self, ClaimedJob};
use crate::worker::state::AppState;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    /// A JSON number: `2.0` is as good as `2`, as JSON Schema's integer says.
    max_jobs: Option<f64>,
    lease_seconds: Option<f64>,
    wait_seconds: Option<f64>,
}

pub async fn claim(
    State(app): State<AppState>,
    caller: Caller,
    Path(queue_name): Path<String>,
    req_body: Body,
) -> Result<Json<Value>, ApiError> {
    caller.require(allow::BRIDGE)?;
    let Some(queue_name) = QUEUES.iter().copied().find(|q| *q == queue_name) else {
        return Err(ApiError::not_found(format!(
            "no queue {queue_name:?}; queues: {}",
            QUEUES.join(", ")
        )));
    };
    if !app.settings.queue.is_external(queue_name) {
        return Err(internal_queue(queue_name));
    }
    let b: ClaimBody = body::json(req_body, body::SMALL_LIMIT).await?;
    let q = &app.settings.queue;
    let asked = b.max_jobs.unwrap_or(1.0);
    if asked.fract() != 0.0 || !(1.0..=f64::from(q.max_claim_batch)).contains(&asked) {
        return Err(bad(format!(
            "max_jobs must be a whole number from 1 to {}, not {asked}",
            q.max_claim_batch
        )));
    }
    // Whole and within a u32 bound, checked above.
    let max_jobs = asked as u32;
    let lease = b.lease_seconds.unwrap_or(q.lease_seconds as f64);
    if !(1.0..=q.max_lease_seconds as f64).contains(&lease) {
        return Err(bad(format!(
            "lease_seconds must be 1 to {}, not {lease}",
            q.max_lease_seconds
        )));
    }
    let wait = b.wait_seconds.unwrap_or(0.0);
    if !(0.0..=q.max_wait_seconds as f64).contains(&wait) {
        return Err(bad(format!(
            "wait_seconds must be 0 to {}, not {wait}",
            q.max_wait_seconds
        )));
    }
    let holder = format!("key:{}", caller.name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait);
    let mut woken = app.wakeups.subscribe(queue_name);
    loop {
        woken.borrow_and_update();
        let jobs = claim_once(&app, queue_name, max_jobs, lease, &holder).await?;
        let now = tokio::time::Instant::now();
        if !jobs.is_empty() || now >= deadline {
            return Ok(Json(
                json!({ "jobs": jobs.iter().map(view).collect::<Vec<_>>() }),
            ));
        }
        // Woken by a NOTIFY, or look again in a second: a lost wake-up
        // costs at most that.
        let next_poll = (now + Duration::from_secs(1)).min(deadline);
        tokio::select! {
            _ = woken.changed() => {}
            _ = tokio::time::sleep_until(next_poll) => {}
        }
    }
}

fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_claim", message)
}

fn view(j: &ClaimedJob) -> Value {
    json!({
        "id": j.id,
        "queue": j.queue,
        "kind": j.kind,
        "payload": j.payload,
        "lease_token": j.lease_token.as_str(),
        "attempt": j.attempt,
        "max_attempts": j.max_attempts,
        "analysis_id": j.analysis_id,
        "lease_until": j.lease_until,
    })
}

async fn claim_once(
    app: &AppState,
    queue_name: &str,
    max_jobs: u32,
    lease: f64,
    holder: &str,
) -> Result<Vec<ClaimedJob>, ApiError> {
    let req = queue::Claim {
        queue: queue_name,
        max_jobs,
        lease: Duration::from_secs_f64(lease),
        holder,
        max_running: app.settings.queue.limits(queue_name).max_running,
    };
    jobs::claim(&app.db, &app.notifier, &req)
        .await
        .map_err(queue_error)
}
