//! The queue's periodic maintenance, run by every worker and done by one
//! process at a time (the queue's advisory lock): expired leases go back
//! to the queue or are discarded, and the analyses of discarded jobs get
//! their status in the same transaction; finished jobs past the retention
//! are pruned, and so are idempotency keys past their day
//! (`intake::idempotency::KEEP`).

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use super::status::{self, Actor};
use crate::config::Queue;
use crate::queue::{self, Notifier};

pub async fn run(db: PgPool, settings: Queue, notifier: Notifier) {
    let every = Duration::from_secs(settings.maintenance_interval);
    // Workers booted together should not all knock at once.
    let first = every.mul_f64(rand::random::<f64>());
    tokio::time::sleep(first).await;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(e) = pass(&db, &settings, &notifier).await {
            tracing::debug!(error = %e, "queue maintenance skipped");
        }
    }
}

/// One maintenance pass; public so tests and `sandgnat queue` can run one.
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
