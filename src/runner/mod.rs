//! The job-runner role (`sandgnat job-runner`, started by the master,
//! `queue.runners` of them): an isolated process that claims the jobs the
//! appliance runs itself — `static` (when `intake.static_analysis_enabled`)
//! and `webhook` — one at a time, and reports each outcome through
//! `analyses::jobs` so the analysis status, its results and its audit
//! trail follow. It holds no listening socket: only the scoreboard and the
//! settings are inherited; it reaches Postgres and reads the sample store
//! (the quarantine, or the bucket) itself, as the service account.
//!
//! Supervised like a worker: it beats its heartbeat from its event loop,
//! and while a static analysis runs on the blocking pool the heartbeat
//! stays at the time that analysis started, so an analysis stuck in a
//! parser for `server.timeout` gets the runner aborted and replaced (the
//! job's lease then runs out and the job is retried, then discarded).
//!
//! Stopping: TERM (a graceful stop, or HUP replacing the runner) stops
//! claiming and gives the job in hand `server.graceful_timeout` to
//! finish, after which it is abandoned (failed with a retry, so another
//! runner takes it at once); INT and QUIT leave at once (the job's lease
//! runs out and it is retried).

mod work;

use std::process::ExitCode;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use crate::shutdown;

/// What the master tells a runner on its command line.
#[derive(Debug, Clone, clap::Args)]
pub struct RunnerArgs {
    #[arg(long)]
    pub slot: usize,
    #[arg(long)]
    pub master_pid: u32,
}

pub fn run(args: RunnerArgs) -> ExitCode {
    let booted = match crate::child::boot(
        "job-runner",
        "runner",
        args.slot,
        args.master_pid,
        Some(crate::confine::Role::Runner),
    ) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let crate::child::Booted {
        board,
        settings,
        runtime,
        log: _log,
    } = booted;
    let store = match crate::storage::SampleStore::from_settings(
        &settings,
        crate::storage::Meter::new(board.clone()),
    ) {
        Ok(s) => s,
        Err(e) => return crate::child::failed(&board, args.slot, "job-runner", e.to_string()),
    };
    let outcome = runtime.block_on(async {
        // Lazy: a database that is down now is retried by the claim loop.
        let db = crate::store::lazy_pool(&settings).map_err(|e| e.to_string())?;
        let signals =
            shutdown::Signals::register().map_err(|e| format!("cannot watch signals: {e}"))?;
        let (trigger, shutdown) = shutdown::channel();
        tokio::spawn(signals.watch(
            trigger.clone(),
            "TERM: no new jobs; finishing the one in hand",
        ));
        let frozen = Arc::new(AtomicU32::new(0));
        crate::child::ready(
            &board,
            args.slot,
            args.master_pid,
            trigger,
            Some(frozen.clone()),
        );
        if settings.queue.webhook_secret.is_none() {
            tracing::warn!("queue.webhook_secret is not set: webhooks are sent unsigned");
        }
        tracing::info!(
            slot = args.slot,
            static_analysis = settings.intake.static_analysis_enabled,
            "job runner ready"
        );
        work::Runner::new(
            settings.clone(),
            db,
            store,
            board.clone(),
            args.slot,
            frozen,
        )
        .run(shutdown)
        .await;
        Ok::<(), String>(())
    });
    // An analysis abandoned on the blocking pool must not hold the exit.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => {
            tracing::info!("job runner exiting");
            ExitCode::SUCCESS
        }
        Err(e) => crate::child::failed(&board, args.slot, "job-runner", e),
    }
}
