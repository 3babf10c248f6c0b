//! Work that must run once across the cluster, whichever nodes share the
//! database: queue maintenance (expired leases, pruning; `analyses::upkeep`),
//! sample retention (`crate::retention`) and, with an S3 store, the sweep
//! of the shared bucket for objects no sample names
//! (`intake::store_leftovers`). Every node's recorder (one
//! process per node) contends for the cluster's lead (`store::lead`); the
//! one that holds it runs each duty when it falls due, as the table
//! `cluster_duties` says (who ran it last, when, with what outcome), so a
//! node that takes over runs each duty on time rather than a whole
//! interval after it started. The others try again every
//! `queue.maintenance_interval` (5 s at most), so the work moves within
//! one interval of its holder's death, and within `lead::SILENCE` more of
//! its holder falling silent.
//!
//! What is not here stays per node: the sweep for crash leftovers of the
//! local spool and quarantine (`intake::leftovers`) looks at this node's
//! disk, which no other node can see.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::config::Settings;
use crate::scoreboard::Scoreboard;
use crate::store::lead::{self, Lead, Silence};

/// One kind of run-once work.
pub struct Duty {
    /// Its row in `cluster_duties`.
    pub name: &'static str,
    pub every: Duration,
    run: for<'a> fn(&'a Context) -> BoxFuture<'a, Result<Value, String>>,
}

/// What a duty runs with.
pub struct Context {
    pub db: PgPool,
    pub settings: Settings,
    pub notifier: crate::queue::Notifier,
    /// Where retention deletes bytes; `None` when the settings describe
    /// no usable store (said at start; retention then fails each pass).
    pub store: Option<crate::storage::SampleStore>,
    /// Where the sweep of the bucket counts what it removed.
    pub board: Option<Arc<Scoreboard>>,
}

/// The duties these settings ask for.
pub fn list(settings: &Settings) -> Vec<Duty> {
    let mut duties = vec![Duty {
        name: "queue_maintenance",
        every: Duration::from_secs(settings.queue.maintenance_interval),
        run: |cx| Box::pin(queue_maintenance(cx)),
    }];
    if settings.storage.backend == "s3" {
        duties.push(Duty {
            name: "store_leftovers",
            every: Duration::from_secs(settings.intake.leftover_sweep_interval.max(1)),
            run: |cx| Box::pin(store_leftovers(cx)),
        });
    }
    if settings.retention.sample_days > 0 {
        duties.push(Duty {
            name: "retention",
            every: Duration::from_secs(settings.retention.interval),
            run: |cx| Box::pin(retention(cx)),
        });
    }
    duties
}

async fn queue_maintenance(cx: &Context) -> Result<Value, String> {
    let report = crate::analyses::upkeep::pass(&cx.db, &cx.settings.queue, &cx.notifier)
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "ran": report.ran,
        "reclaimed": report.reclaimed.len(),
        "pruned": report.pruned,
    }))
}

async fn retention(cx: &Context) -> Result<Value, String> {
    let store = cx
        .store
        .as_ref()
        .ok_or("no sample store: see the error logged at start")?;
    let done = crate::retention::pass(&cx.db, &cx.settings.retention, store)
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({ "purged": done.purged, "skipped": done.skipped }))
}

async fn store_leftovers(cx: &Context) -> Result<Value, String> {
    let store = cx
        .store
        .as_ref()
        .ok_or("no sample store: see the error logged at start")?;
    let age = Duration::from_secs(cx.settings.intake.leftover_age);
    let swept = crate::intake::store_leftovers::sweep(&cx.db, store, age)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(board) = &cx.board {
        board.header().leftovers_removed[STORE_LEFTOVERS].fetch_add(swept.removed, Relaxed);
    }
    if swept != Default::default() {
        tracing::info!(
            set_aside = swept.set_aside,
            restored = swept.restored,
            removed = swept.removed,
            "swept objects of the bucket that no sample names"
        );
    }
    Ok(json!({
        "set_aside": swept.set_aside,
        "restored": swept.restored,
        "removed": swept.removed,
    }))
}

/// `sandgnat_leftovers_removed_total{kind="store"}`.
const STORE_LEFTOVERS: usize = 2;
const _: () = assert!(matches!(
    crate::scoreboard::LEFTOVER_KINDS[STORE_LEFTOVERS].as_bytes(),
    b"store"
));

/// How often a process without the lead tries to take it.
fn retry(settings: &Settings) -> Duration {
    Duration::from_secs(settings.queue.maintenance_interval).min(Duration::from_secs(5))
}

/// Contends for the lead and, while this process holds it, runs every
/// duty when it falls due; for as long as the process runs.
pub async fn run(db: PgPool, settings: Settings, board: Arc<Scoreboard>) {
    let store = crate::storage::SampleStore::from_settings(
        &settings,
        crate::storage::Meter::new(board.clone()),
    )
    .inspect_err(|e| tracing::error!(error = %e, "retention cannot reach the sample store"))
    .ok();
    let cx = Context {
        notifier: crate::queue::Notifier::new(db.clone()),
        db,
        settings,
        store,
        board: Some(board.clone()),
    };
    let duties = list(&cx.settings);
    let retry = retry(&cx.settings);
    let mut lead: Option<Lead> = None;
    let mut next_try = Instant::now();
    let mut tick = tokio::time::interval(lead::PING);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let still = match lead.as_mut() {
            Some(held) => Some(held.still_held().await),
            None => None,
        };
        match still {
            None if Instant::now() >= next_try => {
                next_try = Instant::now() + retry;
                lead = take(&cx, &board).await;
            }
            Some(false) => lead = lost(lead.take(), &board).await,
            _ => {}
        }
        let Some(held) = lead.as_mut() else { continue };
        for duty in &duties {
            match due(&cx.db, duty).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, duty = duty.name, "cannot tell whether a duty is due");
                    break;
                }
            }
            let (outcome, kept) = while_held(held, (duty.run)(&cx)).await;
            match outcome {
                Ok(outcome) => {
                    if let Err(e) = record(&cx, duty.name, &outcome).await {
                        tracing::warn!(error = %e, duty = duty.name, "cannot record a duty's run");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, duty = duty.name, "a duty failed; it runs again when next due")
                }
            }
            if !kept {
                lead = lost(lead.take(), &board).await;
                break;
            }
        }
    }
}

/// Tries to take the lead; says so when it does.
async fn take(cx: &Context, board: &Scoreboard) -> Option<Lead> {
    match lead::try_take(&cx.db).await {
        Ok(Some((held, silence))) => {
            board.header().lead_pid.store(std::process::id(), Relaxed);
            tracing::info!(
                node = %cx.settings.node.name,
                "this process now runs the cluster's run-once work (queue maintenance, retention)"
            );
            if silence == Silence::KeptAlive {
                tracing::warn!(
                    "the database has no idle_session_timeout (PostgreSQL before 14): if this node \
                     froze, another would take the run-once work over only once TCP keep-alive \
                     gives up on it"
                );
            }
            if let Err(e) = record(cx, "lead", &json!({})).await {
                tracing::debug!(error = %e, "cannot record who took the lead");
            }
            Some(held)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(error = %e, "cannot contend for the cluster's lead");
            None
        }
    }
}

/// Lets go of a lead that is no longer this session's.
async fn lost(held: Option<Lead>, board: &Scoreboard) -> Option<Lead> {
    board.header().lead_pid.store(0, Relaxed);
    if let Some(held) = held {
        tracing::warn!("lost the cluster's lead (the database session ended or stopped answering); contending again");
        held.release().await;
    }
    None
}

/// Runs `work`, pinging the lead meanwhile so the session holding it is
/// never idle for long; returns the work's outcome and whether the lead
/// was held throughout. A lead lost midway lets the work finish: every
/// duty is safe to run alongside another holder's.
async fn while_held<T>(held: &mut Lead, work: BoxFuture<'_, T>) -> (T, bool) {
    let mut work = work;
    let mut kept = true;
    let mut ping = tokio::time::interval(lead::PING);
    ping.tick().await;
    loop {
        tokio::select! {
            out = &mut work => return (out, kept),
            _ = ping.tick(), if kept => kept = held.still_held().await,
        }
    }
}

/// Whether `duty` last ran longer than its interval ago (by the
/// database's clock, which every node shares), or never.
async fn due(db: &PgPool, duty: &Duty) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce((SELECT at <= now() - make_interval(secs => $2)
                            FROM cluster_duties WHERE duty = $1), true)",
    )
    .bind(duty.name)
    .bind(duty.every.as_secs_f64())
    .fetch_one(db)
    .await
}

async fn record(cx: &Context, duty: &str, outcome: &Value) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cluster_duties (duty, node, pid, at, outcome)
         VALUES ($1, $2, $3, now(), $4)
         ON CONFLICT (duty) DO UPDATE
            SET node = excluded.node, pid = excluded.pid, at = excluded.at,
                outcome = excluded.outcome",
    )
    .bind(duty)
    .bind(&cx.settings.node.name)
    .bind(std::process::id() as i32)
    .bind(sqlx::types::Json(outcome))
    .execute(&cx.db)
    .await?;
    Ok(())
}
