//! The recorder role (`sandgnat recorder`, one per master): the process
//! that writes every worker's submissions to Postgres, so that group
//! commit batches across the whole node. Per worker, a batch could hold
//! only that worker's connections, and once connections are spread over
//! the workers those batches stay small: the statement's fixed cost in
//! Postgres is then paid for few submissions. One batcher for the node
//! gathers them all (benches/RESULTS.md, the recorder's run).
//!
//! Workers connect to its Unix socket (bound by the master next to
//! `server.socket`, so a recorder being replaced loses no connection: they
//! wait in the backlog) and hand it rows (`wire`); it answers each once the
//! row's batch has committed, or why not. It holds no other socket, runs as
//! the service account, and is supervised like a worker: a heartbeat from
//! its event loop, replaced when it crashes or goes silent. HUP replaces it
//! (new settings); on TERM it tells each worker to go away, answers what
//! it has read, and leaves once every worker has closed its connection.
//! The master stops it last, after the workers, so a graceful stop answers
//! every submission in flight.

pub mod client;
mod serve;
mod wire;

use std::os::fd::FromRawFd;
use std::process::ExitCode;
use std::time::Duration;

use crate::shutdown;
use crate::sockets::FIRST_LISTENER_FD;

/// What the master tells the recorder on its command line.
#[derive(Debug, Clone, clap::Args)]
pub struct RecorderArgs {
    #[arg(long)]
    pub slot: usize,
    #[arg(long)]
    pub master_pid: u32,
}

pub fn run(args: RecorderArgs) -> ExitCode {
    let booted = match crate::child::boot("recorder", "recorder", args.slot, args.master_pid, None)
    {
        Ok(b) => b,
        Err(code) => return code,
    };
    let crate::child::Booted {
        board,
        settings,
        runtime,
        log: _log,
    } = booted;
    let outcome = runtime.block_on(async {
        // SAFETY: descriptor 5 is the recorder's socket, placed by the master.
        let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(FIRST_LISTENER_FD) };
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot use the recorder's socket: {e}"))?;
        let listener = tokio::net::UnixListener::from_std(listener)
            .map_err(|e| format!("cannot use the recorder's socket: {e}"))?;
        // Lazy: a database that is down now fails the rows sent meanwhile,
        // each with a 503, and is retried for the next ones.
        let db = crate::store::lazy_pool(&settings).map_err(|e| e.to_string())?;
        let signals =
            shutdown::Signals::register().map_err(|e| format!("cannot watch signals: {e}"))?;
        let (trigger, shutdown) = shutdown::channel();
        tokio::spawn(signals.watch(
            trigger.clone(),
            "TERM: telling the workers to go away; answering what is in hand",
        ));
        crate::child::ready(&board, args.slot, args.master_pid, trigger, None);
        // The server's settings, once it answers (it may come up after
        // us): durability for /readyz, autovacuum for the log.
        tokio::spawn({
            let (db, board) = (db.clone(), board.clone());
            async move {
                crate::store::durability::check_until_known(db.clone(), board).await;
                crate::store::autovacuum::warn_if_off(&db).await;
            }
        });
        // One process sweeps for crash leftovers; the recorder is the one
        // of which there is exactly one, and it has the database.
        tokio::spawn(crate::intake::leftovers::run(
            db.clone(),
            board.clone(),
            crate::storage::local::quarantine_dir(&settings),
            crate::intake::spool::spool_dir(&settings),
            Duration::from_secs(settings.intake.leftover_age),
            Duration::from_secs(settings.intake.leftover_sweep_interval.max(1)),
        ));
        // One process per node contends for the work that runs once
        // across the cluster; the recorder is the one of which there is
        // exactly one.
        tokio::spawn(crate::duties::run(
            db.clone(),
            settings.clone(),
            board.clone(),
        ));
        tracing::info!(slot = args.slot, "recorder ready");
        let deadline = Duration::from_millis(settings.database.record_timeout_ms);
        serve::serve(listener, db, deadline, shutdown).await;
        Ok::<(), String>(())
    });
    match outcome {
        Ok(()) => {
            tracing::info!("recorder exiting");
            ExitCode::SUCCESS
        }
        Err(e) => crate::child::failed(&board, args.slot, "recorder", e),
    }
}
