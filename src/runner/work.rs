//! A runner's loop: claim one job from its queues (round robin, so a flood
//! of static analyses never starves the webhooks), hold its lease while the
//! job's kind runs, report the outcome, repeat; when there is nothing to
//! claim, wait for a LISTEN/NOTIFY wake-up, or one second at most.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::select_all;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::analyses::jobs::{self as analysis_jobs, Failure};
use crate::analyses::status::Actor;
use crate::config::Settings;
use crate::jobs::{static_analysis, webhook, Outcome};
use crate::queue::{self, Backoff, Claim, ClaimedJob, Notifier, QueueError, Wakeups};
use crate::scoreboard::Scoreboard;
use crate::shutdown::Shutdown;
use crate::storage::{SampleStore, StoreError};

/// The lease a runner takes; it extends it every third of that while the
/// job runs, so a runner that dies gives its job back within a minute.
const LEASE: Duration = Duration::from_secs(60);
/// The longest a runner waits for a wake-up before it looks again.
const POLL: Duration = Duration::from_secs(1);
/// Tries to report an outcome while the database is away.
const REPORT_TRIES: u32 = 5;
/// With `debug.fault_injection`, the file name whose static analysis hangs.
pub const DEBUG_HANG: &str = "__debug_hang__";

pub struct Runner {
    settings: Settings,
    db: PgPool,
    store: SampleStore,
    notifier: Notifier,
    wakeups: Wakeups,
    board: Arc<Scoreboard>,
    slot: usize,
    frozen: Arc<AtomicU32>,
    holder: String,
    backoff: Backoff,
    /// Webhook deliveries per destination address, across this runner's
    /// jobs.
    hosts: webhook::hostrate::HostLimiter,
    seq: u64,
}

/// How the runner let go of a job.
enum Ending {
    Reported(Outcome),
    /// The lease was lost (expired, cancelled, re-claimed): nothing to
    /// report, the job is someone else's now.
    Lost(String),
    /// Stopping, and `graceful_timeout` ran out.
    Abandoned,
}

impl Runner {
    pub fn new(
        settings: Settings,
        db: PgPool,
        store: SampleStore,
        board: Arc<Scoreboard>,
        slot: usize,
        frozen: Arc<AtomicU32>,
    ) -> Self {
        Runner {
            backoff: Backoff::from_settings(&settings.queue),
            hosts: webhook::hostrate::HostLimiter::new(settings.queue.webhook_per_host),
            notifier: Notifier::new(db.clone()),
            wakeups: Wakeups::new(db.clone()),
            // Which runner, on which node: in the job's lease, its audit
            // rows and a reclaimed lease's error.
            holder: format!("runner:{}@{}", std::process::id(), settings.node.name),
            settings,
            db,
            store,
            board,
            slot,
            frozen,
            seq: 0,
        }
    }

    fn queues(&self) -> Vec<&'static str> {
        if self.settings.intake.static_analysis_enabled {
            vec!["static", "notify"]
        } else {
            vec!["notify"]
        }
    }

    pub async fn run(mut self, mut stop: Shutdown) {
        let queues = self.queues();
        let mut wake: Vec<watch::Receiver<u64>> =
            queues.iter().map(|q| self.wakeups.subscribe(q)).collect();
        let mut first = 0;
        let mut db_down = false;
        while !stop.is_requested() {
            // Marked seen before claiming: a wake-up that lands while we
            // claim is not lost.
            for w in &mut wake {
                w.borrow_and_update();
            }
            let mut claimed = None;
            for i in 0..queues.len() {
                let q = queues[(first + i) % queues.len()];
                match self.claim(q).await {
                    Ok(Some(job)) => {
                        first = (first + i + 1) % queues.len();
                        claimed = Some(job);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if !db_down {
                            tracing::warn!(error = %e, queue = q, "cannot claim jobs; retrying every second");
                        }
                        db_down = true;
                        break;
                    }
                }
            }
            if let Some(job) = claimed {
                if db_down {
                    tracing::info!("claiming jobs again");
                    db_down = false;
                }
                self.hold(job, stop.clone()).await;
                continue;
            }
            let changed = select_all(wake.iter_mut().map(|w| Box::pin(w.changed())));
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.requested() => break,
            }
        }
    }

    async fn claim(&self, queue: &str) -> Result<Option<ClaimedJob>, QueueError> {
        let req = Claim {
            queue,
            max_jobs: 1,
            lease: LEASE,
            holder: &self.holder,
            max_running: self.settings.queue.limits(queue).max_running,
        };
        let jobs = analysis_jobs::claim(&self.db, &self.notifier, &req).await?;
        Ok(jobs.into_iter().next())
    }

    /// Runs one job under its lease and reports how it ended.
    async fn hold(&mut self, job: ClaimedJob, mut stop: Shutdown) {
        self.seq += 1;
        let slot = self.board.slot(self.slot);
        // What the master names if this runner has to be aborted.
        slot.note_request(
            self.seq,
            &format!("{} job {} (attempt {})", job.kind, job.id, job.attempt),
        );
        slot.polling_seq.store(self.seq, Relaxed);
        slot.in_flight.store(1, Relaxed);
        tracing::info!(job = %job.id, kind = %job.kind, queue = %job.queue,
                       analysis_id = job.analysis_id.map(|a| a.to_string()), attempt = job.attempt, "job started");
        let graceful = Duration::from_secs(self.settings.server.graceful_timeout);
        let ending = tokio::select! {
            outcome = self.perform(&job) => Ending::Reported(outcome),
            lost = self.keep_lease(&job) => Ending::Lost(lost.to_string()),
            _ = async { stop.requested().await; tokio::time::sleep(graceful).await } => Ending::Abandoned,
        };
        let outcome = match ending {
            Ending::Reported(outcome) => outcome,
            Ending::Lost(why) => {
                tracing::warn!(job = %job.id, kind = %job.kind, reason = %why, "lease lost; letting the job go");
                self.board.count_runner_job(&job.kind, "lost");
                slot.in_flight.store(0, Relaxed);
                slot.polling_seq.store(0, Relaxed);
                return;
            }
            Ending::Abandoned => {
                tracing::warn!(job = %job.id, kind = %job.kind, "graceful_timeout passed while stopping; abandoning the job");
                Outcome::Retry(format!(
                    "abandoned: runner {} was stopping and server.graceful_timeout ({} s) passed",
                    self.holder, self.settings.server.graceful_timeout
                ))
            }
        };
        self.report(&job, outcome).await;
        slot.in_flight.store(0, Relaxed);
        slot.polling_seq.store(0, Relaxed);
    }

    async fn perform(&self, job: &ClaimedJob) -> Outcome {
        match job.kind.as_str() {
            "static" => self.static_analysis(job).await,
            "webhook" => webhook::deliver(&self.db, &self.settings.queue, &self.hosts, job).await,
            other => Outcome::Discard(format!(
                "job kind {other:?} is not one the appliance's runners run"
            )),
        }
    }

    async fn static_analysis(&self, job: &ClaimedJob) -> Outcome {
        let sha256 = job
            .payload
            .get("sha256")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if !crate::storage::is_sha256(sha256) {
            return Outcome::Discard(format!("payload sha256 {sha256:?} is not a SHA-256"));
        }
        // The location intake stored it at, computed from the hash rather
        // than read from anywhere, so nothing outside the store can be
        // named. A remote store's sample is first copied to a private
        // file in the fetch directory (the parsers want a file); it goes
        // when `_fetched` drops.
        let (path, _fetched) = match self.store.local() {
            Some(q) => (q.path_for(sha256), None),
            None => {
                let dir = crate::storage::fetch_dir(&self.settings);
                match self.store.copy_to_file(sha256, &dir).await {
                    Ok(f) => (f.path().to_path_buf(), Some(f)),
                    Err(StoreError::Missing) => {
                        return Outcome::Discard(format!(
                            "the sample is not in the store ({})",
                            self.store.location(sha256)
                        ))
                    }
                    Err(e) => return Outcome::Retry(format!("cannot fetch the sample: {e}")),
                }
            }
        };
        let max = self.settings.intake.max_sample_bytes;
        // Fault injection (tests only): a sample submitted under this name
        // hangs its analysis, as a parser stuck on hostile input would.
        let hang = self.settings.debug.fault_injection
            && job.payload.get("filename").and_then(|v| v.as_str()) == Some(DEBUG_HANG);
        // The heartbeat stays at this moment until the analysis returns
        // (it unfreezes itself, even if nobody awaits it any more).
        let frozen = self.frozen.clone();
        self.board.slot(self.slot).beat();
        frozen.fetch_add(1, Relaxed);
        let task = tokio::task::spawn_blocking(move || {
            if hang {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            let result = static_analysis::analyse(&path, max);
            frozen.fetch_sub(1, Relaxed);
            result
        });
        match task.await {
            Ok(Ok(doc)) => Outcome::Done(doc),
            Ok(Err(e @ static_analysis::AnalyseError::Missing(_))) => {
                Outcome::Discard(e.to_string())
            }
            Ok(Err(e)) => Outcome::Retry(e.to_string()),
            // A panic outside the parsers' guard; the closure did not
            // get to unfreeze the heartbeat.
            Err(e) => {
                self.frozen.fetch_sub(1, Relaxed);
                Outcome::Retry(format!("the analysis task failed: {e}"))
            }
        }
    }

    /// Extends the lease every third of its length; returns only when the
    /// lease is lost. A database hiccup is tolerated: the lease is long
    /// enough for the next try.
    async fn keep_lease(&self, job: &ClaimedJob) -> QueueError {
        let mut tick = tokio::time::interval(LEASE / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            let extended = match self.db.acquire().await {
                Ok(mut conn) => {
                    queue::heartbeat(&mut conn, job.id, job.lease_token.as_str(), LEASE, None).await
                }
                Err(e) => Err(QueueError::Db(e)),
            };
            match extended {
                Ok(_) => {}
                Err(QueueError::Db(e)) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot extend the lease; trying again")
                }
                Err(lost) => return lost,
            }
        }
    }

    async fn report(&self, job: &ClaimedJob, outcome: Outcome) {
        let actor = Actor {
            name: &self.holder,
            request_id: None,
        };
        if let Outcome::Later(why, delay) = &outcome {
            return self.put_back(job, why, *delay, &actor).await;
        }
        for attempt in 1..=REPORT_TRIES {
            let (counted, result) = match &outcome {
                Outcome::Done(doc) => (
                    "completed",
                    analysis_jobs::complete(
                        &self.db,
                        &self.notifier,
                        job.id,
                        job.lease_token.as_str(),
                        doc.clone(),
                        &actor,
                    )
                    .await
                    .map(|o| (None, o)),
                ),
                Outcome::Retry(error) | Outcome::Discard(error) => {
                    let retry = matches!(outcome, Outcome::Retry(_));
                    let failure = Failure {
                        error: json!(error),
                        retry,
                        backoff: &self.backoff,
                    };
                    let r = analysis_jobs::fail(
                        &self.db,
                        &self.notifier,
                        job.id,
                        job.lease_token.as_str(),
                        failure,
                        &actor,
                    )
                    .await
                    .map(|(f, o)| (Some(f), o));
                    ("failed", r)
                }
                // Put back above.
                Outcome::Later(..) => return,
            };
            match result {
                Ok((failed, analysis)) => {
                    let outcome_label = match &failed {
                        None => counted,
                        Some(f) if f.state == "discarded" => "discarded",
                        Some(_) => "retried",
                    };
                    self.board.count_runner_job(&job.kind, outcome_label);
                    match (&outcome, failed) {
                        (Outcome::Done(_), _) => tracing::info!(
                            job = %job.id, kind = %job.kind, analysis_id = job.analysis_id.map(|a| a.to_string()),
                            analysis_status = analysis.analysis_status, "job completed"),
                        (Outcome::Retry(e) | Outcome::Discard(e), Some(f)) => tracing::warn!(
                            job = %job.id, kind = %job.kind, analysis_id = job.analysis_id.map(|a| a.to_string()),
                            error = %e, state = %f.state, run_at = %f.run_at, "job failed"),
                        _ => {}
                    }
                    return;
                }
                Err(QueueError::Db(e)) if attempt < REPORT_TRIES => {
                    tracing::warn!(job = %job.id, error = %e, "cannot report the job's outcome; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    // Stale lease, or the database stayed away: the lease
                    // runs out and the job is retried.
                    tracing::warn!(job = %job.id, kind = %job.kind, error = %e, "job outcome not recorded");
                    self.board.count_runner_job(&job.kind, "lost");
                    return;
                }
            }
        }
    }

    /// Gives a job that was held back (not attempted) to the queue again
    /// for after `delay`; if that cannot be recorded, the lease runs out
    /// and the job comes back anyway.
    async fn put_back(&self, job: &ClaimedJob, why: &str, delay: Duration, actor: &Actor<'_>) {
        let token = job.lease_token.as_str();
        match analysis_jobs::snooze(&self.db, &self.notifier, job.id, token, delay, actor).await {
            Ok(_) => tracing::info!(job = %job.id, kind = %job.kind, reason = %why,
                                    delay_ms = delay.as_millis() as u64, "job put back for later"),
            Err(e) => tracing::warn!(job = %job.id, kind = %job.kind, error = %e,
                                     "cannot put the job back; its lease will run out"),
        }
    }
}
