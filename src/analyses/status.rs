//! An analysis's status follows its jobs: `queued` until one of them
//! starts, `running` while any is unfinished after that, then `completed`
//! when every one completed or `failed` when any was discarded or
//! cancelled. Every change is an audit row, written in the transaction
//! that changed the jobs.
//!
//! Webhook jobs do not count: they report on the analysis, they are not
//! part of it. They are held (`scheduled`, no run time) until the analysis
//! reaches a final status, and released here.

use serde_json::json;
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

/// Who caused a change, for the audit trail.
pub struct Actor<'a> {
    pub name: &'a str,
    pub request_id: Option<&'a str>,
}

/// A change an API key asked for over HTTP, as its audit rows name it:
/// `key:<name>`, with the request's id (`crate::request_id`).
pub struct KeyRequest {
    name: String,
    request_id: Option<String>,
}

impl KeyRequest {
    pub fn new(caller: &crate::auth::Caller, headers: &http::HeaderMap) -> Self {
        KeyRequest {
            name: format!("key:{}", caller.name),
            request_id: crate::request_id::of(headers),
        }
    }

    pub fn actor(&self) -> Actor<'_> {
        Actor {
            name: &self.name,
            request_id: self.request_id.as_deref(),
        }
    }
}

/// What `sync` changed.
#[derive(Debug, Default)]
pub struct Synced {
    pub changed: Option<(String, String)>,
    /// Queues that got released jobs (wake them after commit).
    pub woke: Vec<String>,
}

fn derive(jobs: &[(String, i32)]) -> Option<&'static str> {
    if jobs.is_empty() {
        return None;
    }
    let finished = |s: &str| crate::queue::FINISHED.contains(&s);
    if jobs.iter().all(|(s, _)| finished(s)) {
        return Some(if jobs.iter().all(|(s, _)| s == "completed") {
            "completed"
        } else {
            "failed"
        });
    }
    // Started once, running from then on: a retry waiting for its backoff
    // does not send the analysis back to `queued`.
    if jobs
        .iter()
        .any(|(s, attempt)| s == "running" || finished(s) || *attempt > 0)
    {
        Some("running")
    } else {
        Some("queued")
    }
}

/// Recomputes the status of `analysis_id` from its jobs. Call it in the
/// transaction that changed them: the analysis row is locked first, so two
/// jobs finishing at once are counted in turn and the last one sees both.
pub async fn sync(
    conn: &mut PgConnection,
    analysis_id: Uuid,
    actor: &Actor<'_>,
    cause: serde_json::Value,
) -> Result<Synced, sqlx::Error> {
    let current: Option<String> =
        sqlx::query_scalar("SELECT status FROM analyses WHERE id = $1 FOR UPDATE")
            .bind(analysis_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(current) = current else {
        return Ok(Synced::default());
    };
    let jobs: Vec<(String, i32)> = sqlx::query_as(
        "SELECT state, attempt FROM jobs WHERE analysis_id = $1 AND kind <> 'webhook'",
    )
    .bind(analysis_id)
    .fetch_all(&mut *conn)
    .await?;
    let Some(next) = derive(&jobs) else {
        return Ok(Synced::default());
    };
    if next == current {
        return Ok(Synced::default());
    }
    sqlx::query("UPDATE analyses SET status = $2, updated_at = now() WHERE id = $1")
        .bind(analysis_id)
        .bind(next)
        .execute(&mut *conn)
        .await?;
    audit(
        conn,
        analysis_id,
        actor,
        "status_changed",
        json!({ "from": current, "to": next, "cause": cause }),
    )
    .await?;
    let mut woke = Vec::new();
    if next == "completed" || next == "failed" {
        woke = crate::queue::release_held(conn, analysis_id, "webhook")
            .await
            .map_err(|e| match e {
                crate::queue::QueueError::Db(e) => e,
                other => sqlx::Error::Protocol(other.to_string()),
            })?;
    }
    Ok(Synced {
        changed: Some((current, next.to_owned())),
        woke,
    })
}

/// One row of the analysis's append-only audit trail.
pub async fn audit(
    conn: &mut PgConnection,
    analysis_id: Uuid,
    actor: &Actor<'_>,
    event: &str,
    details: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO analysis_audit_log (analysis_id, actor, event, details, request_id)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(analysis_id)
    .bind(actor.name)
    .bind(event)
    .bind(Json(details))
    .bind(actor.request_id)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::derive;

    fn j(states: &[(&str, i32)]) -> Vec<(String, i32)> {
        states.iter().map(|(s, a)| (s.to_string(), *a)).collect()
    }

    #[test]
    fn status_follows_jobs() {
        assert_eq!(derive(&[]), None);
        assert_eq!(derive(&j(&[("available", 0)])), Some("queued"));
        assert_eq!(
            derive(&j(&[("available", 0), ("running", 1)])),
            Some("running")
        );
        assert_eq!(derive(&j(&[("retryable", 1)])), Some("running"));
        assert_eq!(
            derive(&j(&[("completed", 1), ("available", 0)])),
            Some("running")
        );
        assert_eq!(
            derive(&j(&[("completed", 1), ("completed", 2)])),
            Some("completed")
        );
        assert_eq!(
            derive(&j(&[("completed", 1), ("discarded", 3)])),
            Some("failed")
        );
        assert_eq!(derive(&j(&[("cancelled", 0)])), Some("failed"));
    }
}
