//! What a supervised child does first, in every role: attach to the
//! scoreboard, so that every later failure is reported in its slot
//! (`attach`, `failed`); read the master's settings, confine itself where
//! its role is confined, and open its logs (`start`); take the service
//! account's identity and the restrictions of `isolation`
//! (`Started::restrict`); start its event loop. The job runners and the
//! recorder need nothing in between and do it all with `boot`; the worker
//! (a debug switch) and the front end (its TLS key, read while it can, and
//! a multi-threaded loop) take the steps one at a time.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::Settings;
use crate::logging::LogGuard;
use crate::scoreboard::{Scoreboard, SlotState, HEARTBEAT};
use crate::sockets::SCOREBOARD_FD;

/// Exit status of a child that could not boot, and of the master when its
/// workers cannot (gunicorn's `WORKER_BOOT_ERROR`).
pub const EXIT_BOOT_ERROR: u8 = 3;

/// The one child role that maps rule code, and so needs memory it may
/// make executable until its rules are loaded.
const RULE_CODE_ROLE: &str = "worker";

pub struct Booted {
    pub board: Arc<Scoreboard>,
    pub settings: Settings,
    pub runtime: tokio::runtime::Runtime,
    /// Keeps the log writers until the child exits.
    pub log: LogGuard,
}

/// A child that has its settings and its logs, still with the identity
/// it was started with.
pub struct Started {
    pub board: Arc<Scoreboard>,
    pub settings: Settings,
    /// Keeps the log writers until the child exits.
    pub log: LogGuard,
    name: &'static str,
    slot: usize,
}

/// Attaches the child `name` (its command: `worker`, `job-runner`, ...) to
/// the scoreboard the master placed at descriptor 3.
pub fn attach(name: &str) -> Result<Arc<Scoreboard>, ExitCode> {
    // SAFETY: descriptor 3 was placed by the master for exactly this.
    match Scoreboard::attach(unsafe { OwnedFd::from_raw_fd(SCOREBOARD_FD) }) {
        Ok(b) => Ok(Arc::new(b)),
        Err(e) => {
            eprintln!("sandgnat {name}: cannot attach to the scoreboard: {e}");
            Err(ExitCode::from(EXIT_BOOT_ERROR))
        }
    }
}

/// Starts the child `name` in `slot`: attached, with the master's
/// settings, confined as `confine` (if any) and logging as `log_role`.
pub fn start(
    name: &'static str,
    log_role: &'static str,
    slot: usize,
    confine: Option<crate::confine::Role>,
) -> Result<Started, ExitCode> {
    let board = attach(name)?;
    let fail = |why: String| failed(&board, slot, name, why);
    // Only the workers map rule code, and they refuse executable memory
    // themselves once it is loaded (`confine::mdwe`). Reported once the
    // log is open; a kernel older than 6.3 is no reason not to serve.
    let exec_gain = (name != RULE_CODE_ROLE).then(crate::confine::refuse_exec_gain);
    let settings = crate::handover::inherited_settings()
        .map_err(|e| fail(format!("cannot read settings from the master: {e}")))?;
    // Before the log writers start: confinement binds only the threads
    // started after it.
    let confined = confine
        .map(|role| confine_self(role, &settings).map(|r| (role, r)))
        .transpose()
        .map_err(fail)?;
    let log = crate::logging::init(&settings.log, &settings.node.name, log_role)
        .map_err(|e| fail(format!("cannot open log files: {e}")))?;
    if let Some((role, report)) = &confined {
        crate::confine::log_applied(*role, report);
    }
    if let Some(Err(e)) = exec_gain {
        tracing::warn!(error = %e, "cannot refuse this process executable memory (PR_SET_MDWE)");
    }
    Ok(Started {
        board,
        settings,
        log,
        name,
        slot,
    })
}

impl Started {
    /// Reports why the child cannot go on (see `failed`).
    pub fn fail(&self, why: String) -> ExitCode {
        failed(&self.board, self.slot, self.name, why)
    }

    /// Takes the service account's identity and the restrictions of
    /// `isolation`. A missing account fails the boot: a child never stays
    /// root.
    pub fn restrict(&self, master_pid: u32) -> Result<(), ExitCode> {
        crate::isolation::service_account(&self.settings)
            .and_then(|account| crate::isolation::restrict(account, master_pid))
            .map_err(|e| self.fail(e.to_string()))
    }

    /// The child's single-threaded event loop.
    pub fn event_loop(&self) -> Result<tokio::runtime::Runtime, ExitCode> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| self.fail(format!("cannot start the event loop: {e}")))
    }
}

/// Boots the child `name` in `slot`, logging as `log_role`, confined as
/// `confine` (if any).
pub fn boot(
    name: &'static str,
    log_role: &'static str,
    slot: usize,
    master_pid: u32,
    confine: Option<crate::confine::Role>,
) -> Result<Booted, ExitCode> {
    let started = start(name, log_role, slot, confine)?;
    started.restrict(master_pid)?;
    let runtime = started.event_loop()?;
    Ok(Booted {
        board: started.board,
        settings: started.settings,
        runtime,
        log: started.log,
    })
}

/// Confines this process as `role`, while it still has a single thread
/// (before the log writers start).
fn confine_self(
    role: crate::confine::Role,
    settings: &Settings,
) -> Result<Option<crate::confine::Report>, String> {
    crate::confine::apply(role, settings).map_err(|e| e.to_string())
}

/// Reports why the child `name` cannot go on: in its slot (the master reads
/// it for its back-off and exit message), in the log and on stderr.
pub fn failed(board: &Scoreboard, slot: usize, name: &str, why: String) -> ExitCode {
    let s = board.slot(slot);
    s.boot_error.store(&why);
    s.set_state(SlotState::BootFailed);
    tracing::error!(reason = %why, "{name} failed to boot");
    eprintln!("sandgnat {name}: {why}");
    ExitCode::from(EXIT_BOOT_ERROR)
}

/// Marks the child in `slot` ready for the master and starts its
/// `heartbeat` (on the current event loop), which pulls `trigger` once the
/// master is gone.
pub fn ready(
    board: &Arc<Scoreboard>,
    slot: usize,
    master_pid: u32,
    trigger: crate::shutdown::Trigger,
    frozen: Option<Arc<std::sync::atomic::AtomicU32>>,
) {
    let s = board.slot(slot);
    s.pid
        .store(std::process::id(), std::sync::atomic::Ordering::Relaxed);
    s.beat();
    s.set_state(SlotState::Ready);
    tokio::spawn(heartbeat(board.clone(), slot, master_pid, trigger, frozen));
}

/// Beats the child's heartbeat from its event loop, except while `frozen`
/// counts blocking work in progress (its start is then the last sign of
/// life, so work stuck for `server.timeout` gets the child aborted). Stops
/// the child gracefully once its master is gone.
pub async fn heartbeat(
    board: Arc<Scoreboard>,
    slot: usize,
    master_pid: u32,
    trigger: crate::shutdown::Trigger,
    frozen: Option<Arc<std::sync::atomic::AtomicU32>>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        if frozen.as_ref().is_none_or(|f| f.load(Relaxed) == 0) {
            board.slot(slot).beat();
        }
        if std::os::unix::process::parent_id() != master_pid {
            tracing::warn!("master is gone; stopping");
            trigger.graceful();
        }
    }
}
