//! The worker role: one isolated process that serves the HTTP app on the
//! shared Unix socket. It boots (settings, scoreboard slot, `confine`,
//! privileges),
//! announces itself ready, beats its heartbeat from its event loop, and
//! leaves gracefully on TERM, at once on INT/QUIT, or by itself after
//! `max_requests`. It never binds a socket and never outlives its master.
//!
//! Each worker runs a single-threaded event loop: a handler that blocks it
//! stops the heartbeat, which is how the master tells a hung worker from a
//! busy one. CPU-heavy work belongs on the blocking pool.

mod balance;
#[cfg(test)]
mod contract;
pub mod openapi;
mod request;
pub mod routes;
mod server;
mod shared;
pub mod state;
mod unread;

use std::os::fd::FromRawFd;
use std::process::ExitCode;
use std::sync::Arc;

use crate::auth::KeyRing;
use crate::scan::RuleSet;
use crate::sockets::{FIRST_LISTENER_FD, RULES_FD};
use state::{AppState, Inner};

/// What the master tells a worker on its command line.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub slot: usize,
    #[arg(long)]
    pub master_pid: u32,
    /// Leave after this many requests (0: never).
    #[arg(long, default_value_t = 0)]
    pub max_requests: u64,
}

pub fn run(args: WorkerArgs) -> ExitCode {
    let child = match crate::child::start(
        "worker",
        "worker",
        args.slot,
        Some(crate::confine::Role::Worker),
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = child.restrict(args.master_pid) {
        return code;
    }
    if child.settings.debug.fail_worker_boot {
        return child.fail("debug.fail_worker_boot is set".into());
    }
    let fail = |why: String| child.fail(why);
    let (board, settings) = (&child.board, &child.settings);
    // SAFETY: descriptor 5 is the workers' socket, placed by the master.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(FIRST_LISTENER_FD) };
    let runtime = match child.event_loop() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let rules = match crate::handover::read_inherited(RULES_FD)
        .map_err(|e| e.to_string())
        .and_then(|bytes| RuleSet::load(&bytes).map_err(|e| e.to_string()))
        .map(|rules| {
            rules.parallel_from(
                usize::try_from(settings.yara.parallel_scan_bytes).unwrap_or(usize::MAX),
            )
        }) {
        Ok(r) => Arc::new(r),
        Err(e) => return fail(format!("cannot load the compiled YARA rules: {e}")),
    };
    // The rules' code is mapped: from here on this process, which reads
    // hostile samples, never makes memory executable (`confine::mdwe`).
    if let Err(e) = crate::confine::refuse_exec_gain() {
        tracing::warn!(error = %e, "cannot refuse this process executable memory (PR_SET_MDWE)");
    }
    let status = crate::status::local::Local {
        rules_source: crate::scan::rules_dir(settings.yara.rules_dir.as_deref())
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "bundled".to_string()),
        rules_count: rules.count(),
        rules_digest: rules.digest().to_string(),
        rules_loaded_at: chrono::Utc::now(),
        rates: crate::status::rates::Rates::default(),
        // By inode, not a second descriptor, so a draining worker's
        // `drop(listener)` still lets go of the socket.
        workers_socket: crate::sockets::backlog::inode(std::os::fd::AsFd::as_fd(&listener)).ok(),
    };
    let store = match crate::storage::SampleStore::from_settings(
        settings,
        crate::storage::Meter::new(board.clone()),
    ) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let served = runtime.block_on(async {
        let db = crate::store::lazy_pool(settings).map_err(|e| e.to_string())?;
        let state = AppState::new(Inner {
            settings: settings.clone(),
            db: db.clone(),
            keys: KeyRing::default(),
            store,
            spool: crate::intake::spool::spool_dir(settings),
            memory: crate::intake::spool::MemoryBudget::new(
                settings.intake.memory_sample_bytes,
                settings.intake.memory_budget_bytes,
            ),
            recorder: crate::recorder::client::Recorder::new(
                crate::sockets::recorder_socket_path(settings),
                std::time::Duration::from_millis(settings.database.record_timeout_ms),
            ),
            rules,
            board: board.clone(),
            notifier: crate::queue::Notifier::new(db.clone()),
            wakeups: crate::queue::Wakeups::new(db.clone()),
            status,
        });
        tokio::spawn(state.status.rates.clone().sample(board.clone()));
        // Keys are needed before the first request; a database that is down
        // now is retried by the refresher.
        let _ = state.keys.refresh(&db).await;
        tokio::spawn(state.keys.clone().keep_fresh(db.clone()));
        server::Worker::new(settings.clone(), board.clone(), args.clone(), state)
            .serve(listener)
            .await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
