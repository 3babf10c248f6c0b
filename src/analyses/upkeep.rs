//! The queue's periodic maintenance, run by the process that holds the
//! cluster's lead (`crate::duties`), and fenced besides by the queue's own
//! advisory lock: expired leases go back to the queue or are discarded,
//! and the analyses of discarded jobs get their status in the same
//! transaction; finished jobs past the retention are pruned, and so are
//! idempotency keys past their day (`intake::idempotency::KEEP`).

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use super::status::{self, Actor};
use crate::config::Queue;
use crate::queue::{self, Notifier};

/// One maintenance pass.
pub async fn pass(
    db: &PgPool,
    settings: &Queue,
    notifier: &Notifier,
) -> Result<queue::Maintenance, queue::QueueError> {
    let woke = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let report = queue::maintain(
        db,
        Duration::from_secs(settings.retention),
        |conn, reclaimed| {
            let woke = woke.clone();
            Box::pin(async move {
                for job in reclaimed {
                    woke.lock().push(job.queue.clone());
                    if let Some(analysis) = job.analysis_id {
                        let synced = status::sync(
                            conn,
                            analysis,
                            &Actor {
                                name: "sandgnat",
                                request_id: None,
                            },
                            json!({ "job": job.id, "lease": "expired", "job_state": job.state }),
                        )
                        .await?;
                        woke.lock().extend(synced.woke);
                    }
                }
                Ok(())
            })
        },
    )
    .await?;
    if report.ran {
        // Done by the process that holds the pass this time, so the
        // workers do not all scan for the same old keys.
        match crate::intake::idempotency::prune(db, crate::intake::idempotency::KEEP).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "idempotency keys past their time pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune idempotency keys"),
        }
    }
    let mut woke = std::mem::take(&mut *woke.lock());
    woke.sort();
    woke.dedup();
    for q in &woke {
        notifier.poke(q);
    }
    if report.ran && (!report.reclaimed.is_empty() || report.pruned > 0) {
        tracing::info!(
            reclaimed = report.reclaimed.len(),
            pruned = report.pruned,
            "queue maintenance"
        );
    }
    Ok(report)
}
