//! The master ("arbiter"): owns the listening sockets, the settings, the
//! scoreboard and the children, and handles no request.
//!
//! One loop decides everything, as in gunicorn's arbiter: wait for a signal
//! or a tick, handle the queued signals, abort workers whose heartbeat is
//! too old, reap the dead, then spawn or retire children to match the
//! target. Signal handlers only record (see `signals`). The master stays
//! single-threaded on purpose: a child's parent-death signal is bound to
//! the thread that forked it.

mod children;
mod roster;
mod signals;
mod spawn;
mod upgrade;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::{Settings, Sources};
use crate::handover::{memfd, settings_memfd};
use crate::scoreboard::Scoreboard;
use crate::sockets::{Inherited, Listeners};
use crate::systemd;

use roster::{Child, Retire, Role};
use signals::SignalPipe;
use upgrade::Upgrade;

/// How long an aborted worker gets before SIGKILL.
const ABORT_GRACE: Duration = Duration::from_secs(2);
/// How long a fast stop waits before SIGKILL.
const QUICK_STOP: Duration = Duration::from_secs(1);

/// How `serve` was asked to start.
pub struct Launch {
    pub sources: Sources,
    pub settings: Settings,
    /// Sockets handed over by an old master on binary upgrade.
    pub inherited: Inherited,
    /// Where to tell the old master that we are ready.
    pub upgrade_pipe: Option<OwnedFd>,
    /// The arguments `serve` was started with, for the next upgrade.
    pub argv: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Running,
    Stopping { deadline: Instant, graceful: bool },
}

pub struct Arbiter {
    sources: Sources,
    settings: Settings,
    settings_fd: OwnedFd,
    /// The compiled YARA rules, handed to each worker.
    rules_fd: OwnedFd,
    listeners: Listeners,
    board: Scoreboard,
    signals: SignalPipe,
    exe: PathBuf,
    argv: Vec<OsString>,
    children: Vec<Child>,
    /// Workers wanted; TTIN and TTOU move it, HUP resets it.
    target: u32,
    /// Bumped on HUP: workers of an older generation are replaced.
    generation: u64,
    /// Bumped on a HUP whose certificate checks out: the front end of an
    /// older generation is replaced once the new one is ready.
    frontend_generation: u64,
    boot_failures: u32,
    last_boot_error: String,
    next_spawn: Instant,
    phase: Phase,
    /// Set once the pool first became ready (`when_ready`).
    ready: bool,
    reloading: bool,
    upgrade: Option<Upgrade>,
    upgrade_pipe: Option<OwnedFd>,
    /// True when a new master took over our sockets: leave them in place.
    handed_over: bool,
    exit_code: u8,
    watchdog: Option<(Duration, Instant)>,
    account: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] crate::sockets::BindError),
    #[error(transparent)]
    Account(#[from] crate::isolation::IsolationError),
    #[error("cannot compile YARA rules: {0}")]
    Rules(#[from] crate::scan::RulesError),
    #[error(transparent)]
    Tls(#[from] crate::frontend::tls::TlsError),
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> StartError {
    move |source| StartError::Io { what, source }
}

impl Arbiter {
    pub fn start(launch: Launch) -> Result<Self, StartError> {
        let settings = launch.settings;
        tracing::info!(
            event = "on_starting",
            version = env!("CARGO_PKG_VERSION"),
            "starting sandgnat master"
        );
        crate::confine::log_kernel_support(&settings);
        let account = crate::isolation::service_account(&settings)?;
        if let Some((uid, gid)) = account {
            crate::logging::give_files_to(uid.as_raw(), gid.as_raw());
        }
        let signals = SignalPipe::install().map_err(io_err("install signal handlers"))?;
        // Before anything writes into it (the self-signed certificate):
        // whether it may be taken over is judged on what the operator left.
        ensure_state_dirs(&settings, account).map_err(io_err("prepare the state directory"))?;
        check_certificate(&settings)?;
        let listeners = Listeners::bind(&settings, launch.inherited)?;
        for l in &listeners.all {
            tracing::info!(listener = %l.name, "listening");
        }
        if let Some((uid, gid)) = account {
            // The front end drops to the service account and then connects
            // to the workers' socket (mode 0660) like any client; so do the
            // workers to the recorder's.
            for path in [
                settings.server.socket.clone(),
                crate::sockets::recorder_socket_path(&settings),
            ] {
                nix::unistd::chown(&path, Some(uid), Some(gid)).map_err(|e| StartError::Io {
                    what: "give the Unix sockets to the service account",
                    source: e.into(),
                })?;
            }
        }
        let board = Scoreboard::create().map_err(io_err("create the scoreboard"))?;
        let settings_fd =
            settings_memfd(&settings).map_err(io_err("store settings for children"))?;
        let compiled = compile_rules(&settings)?;
        tracing::info!(
            source = %compiled.source,
            files = compiled.files,
            parts = settings.yara.parts(),
            "YARA rules ready"
        );
        let rules_fd =
            memfd("sandgnat-rules", &compiled.bytes).map_err(io_err("store the compiled rules"))?;
        let exe = std::env::current_exe().map_err(io_err("find our own executable"))?;
        let now = Instant::now();
        Ok(Arbiter {
            target: settings.server.workers,
            sources: launch.sources,
            settings,
            settings_fd,
            rules_fd,
            listeners,
            board,
            signals,
            exe,
            argv: launch.argv,
            children: Vec::new(),
            generation: 0,
            frontend_generation: 0,
            boot_failures: 0,
            last_boot_error: String::new(),
            next_spawn: now,
            phase: Phase::Running,
            ready: false,
            reloading: false,
            upgrade: None,
            upgrade_pipe: launch.upgrade_pipe,
            handed_over: false,
            exit_code: 0,
            watchdog: systemd::watchdog_interval().map(|d| (d, now)),
            account,
        })
    }

    /// Runs until stopped; returns the process exit code.
    pub fn run(mut self) -> ExitCode {
        loop {
            self.handle_signals();
            self.reap_children();
            self.murder_silent_workers();
            self.notice_ready_children();
            self.check_upgrade();
            match self.phase {
                Phase::Running => self.manage_workers(),
                Phase::Stopping { deadline, graceful } => {
                    if self.children.is_empty() {
                        break;
                    }
                    self.stop_recorders_last();
                    if Instant::now() >= deadline {
                        tracing::warn!(
                            remaining = self.children.len(),
                            graceful,
                            "stop deadline passed, killing remaining children"
                        );
                        self.signal_all(Signal::SIGKILL);
                    }
                }
            }
            self.ping_watchdog();
            self.sleep();
        }
        self.cleanup();
        tracing::info!(event = "on_exit", code = self.exit_code, "master exiting");
        ExitCode::from(self.exit_code)
    }

    /// Waits for a signal or the next tick.
    fn sleep(&self) {
        let busy = matches!(self.phase, Phase::Stopping { .. })
            || self.reloading
            || self.children.iter().any(|c| !c.ready_seen);
        let tick = if busy { 100 } else { 1000 };
        let mut fds = vec![nix::poll::PollFd::new(
            self.signals.fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if let Some(up) = &self.upgrade {
            fds.push(nix::poll::PollFd::new(
                up.pipe.as_fd(),
                nix::poll::PollFlags::POLLIN,
            ));
        }
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(tick as u16));
        self.signals.drain();
    }

    fn handle_signals(&mut self) {
        for sig in signals::HANDLED {
            let count = self.signals.take(sig);
            if count == 0 {
                continue;
            }
            match sig {
                Signal::SIGINT | Signal::SIGQUIT => self.stop(false),
                Signal::SIGTERM => self.stop(true),
                Signal::SIGHUP => self.reload(),
                Signal::SIGTTIN => {
                    self.target = (self.target + count).min(256);
                    tracing::info!(workers = self.target, "TTIN: one worker more");
                }
                Signal::SIGTTOU => {
                    self.target = self.target.saturating_sub(count).max(1);
                    tracing::info!(workers = self.target, "TTOU: one worker fewer");
                }
                Signal::SIGUSR1 => {
                    crate::logging::reopen();
                    tracing::info!("USR1: log files reopened");
                    self.signal_all(Signal::SIGUSR1);
                }
                Signal::SIGUSR2 => self.start_upgrade(),
                // SIGCHLD only wakes the loop; reaping happens every turn.
                _ => {}
            }
        }
    }

    fn stop(&mut self, graceful: bool) {
        if let Phase::Stopping {
            graceful: false, ..
        } = self.phase
        {
            return;
        }
        systemd::notify("STOPPING=1");
        let (sig, wait) = if graceful {
            (
                Signal::SIGTERM,
                Duration::from_secs(self.settings.server.graceful_timeout),
            )
        } else {
            (Signal::SIGQUIT, QUICK_STOP)
        };
        tracing::info!(graceful, timeout_s = wait.as_secs_f64(), "stopping");
        self.phase = Phase::Stopping {
            deadline: Instant::now() + wait,
            graceful,
        };
        // A graceful stop keeps the recorder until the workers are gone,
        // so the submissions they finish are answered.
        for c in &mut self.children {
            if graceful && c.role == Role::Recorder {
                continue;
            }
            c.stop_sent = true;
            c.kill(sig);
        }
    }

    /// Once only recorders are left of a graceful stop, stops them too.
    fn stop_recorders_last(&mut self) {
        if self.children.iter().any(|c| c.role != Role::Recorder) {
            return;
        }
        for c in self.children.iter_mut().filter(|c| !c.stop_sent) {
            c.stop_sent = true;
            c.kill(Signal::SIGTERM);
        }
    }

    fn reload(&mut self) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        systemd::reloading();
        tracing::info!(event = "on_reload", "HUP: reloading settings");
        let settings = match self.sources.load() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "reload refused, keeping the running settings");
                systemd::notify("READY=1");
                return;
            }
        };
        let account = match crate::isolation::service_account(&settings) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "reload refused, keeping the running settings");
                systemd::notify("READY=1");
                return;
            }
        };
        if settings.server.socket != self.settings.server.socket {
            tracing::warn!(
                socket = %self.settings.server.socket.display(),
                "server.socket changes take effect at the next restart"
            );
        }
        // A state directory that may not be taken over refuses the reload
        // before anything changes.
        if let Err(e) = ensure_state_dirs(&settings, account) {
            tracing::error!(error = %e, "reload refused: cannot prepare the state directory");
            systemd::notify("READY=1");
            return;
        }
        if let Err(e) = self.listeners.rebind(&settings) {
            tracing::error!(error = %e, "reload refused, keeping the running settings");
            systemd::notify("READY=1");
            return;
        }
        let fd = match settings_memfd(&settings) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(error = %e, "reload refused: cannot store settings");
                systemd::notify("READY=1");
                return;
            }
        };
        // A certificate that does not load keeps the running front end
        // (and its certificate); the rest of the reload goes on.
        let new_frontend = match check_certificate(&settings) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "HUP: new certificate refused; the front end keeps serving the old one");
                false
            }
        };
        self.settings_fd = fd;
        self.account = account;
        self.recompile_rules(&settings);
        self.target = settings.server.workers;
        self.settings = settings;
        self.generation += 1;
        if new_frontend {
            self.frontend_generation += 1;
        }
        self.reloading = true;
        // The metrics listener may have moved; it is cheap to restart.
        for c in self.children.iter_mut().filter(|c| c.role == Role::Metrics) {
            c.retire(Retire::Reload);
        }
    }

    /// HUP: compiles the rules again; a failure keeps the running rules and
    /// is reported in the log, in metrics and in `/readyz`.
    fn recompile_rules(&mut self, settings: &Settings) {
        let header = self.board.header();
        match compile_rules(settings).and_then(|c| {
            memfd("sandgnat-rules", &c.bytes)
                .map(|fd| (fd, c))
                .map_err(|e| crate::scan::RulesError::Yara(e.to_string()))
        }) {
            Ok((fd, compiled)) => {
                tracing::info!(source = %compiled.source, files = compiled.files, "YARA rules recompiled");
                self.rules_fd = fd;
                header.rules_error.store("");
            }
            Err(e) => {
                tracing::error!(error = %e, "YARA rules failed to compile; keeping the running rules");
                header.rules_error.store(&e.to_string());
                header
                    .rules_reload_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    fn start_upgrade(&mut self) {
        if self.upgrade.is_some() || self.upgrade_pipe.is_some() {
            tracing::warn!("USR2 ignored: an upgrade is already under way");
            return;
        }
        if matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        match Upgrade::start(&self.exe, &self.argv, &self.listeners) {
            Ok(up) => {
                tracing::info!(
                    event = "pre_exec",
                    new_master = up.pid,
                    "USR2: started new master"
                );
                self.upgrade = Some(up);
            }
            Err(e) => tracing::error!(error = %e, "USR2: cannot start the new master"),
        }
    }

    /// Old master: watch the new one; hand over once it is ready.
    fn check_upgrade(&mut self) {
        let Some(up) = &mut self.upgrade else { return };
        match up.poll() {
            upgrade::Status::Waiting => {}
            upgrade::Status::Ready => {
                let pid = up.pid;
                tracing::info!(
                    new_master = pid,
                    "new master is ready; handing over and leaving"
                );
                systemd::notify(&format!("MAINPID={pid}"));
                self.handed_over = true;
                self.upgrade = None;
                self.stop(true);
            }
            upgrade::Status::Failed => {
                tracing::error!(
                    new_master = up.pid,
                    "new master failed before it was ready; carrying on"
                );
                self.upgrade = None;
            }
        }
    }

    fn signal_all(&self, sig: Signal) {
        for c in &self.children {
            c.kill(sig);
        }
    }

    fn ping_watchdog(&mut self) {
        if let Some((every, last)) = &mut self.watchdog {
            if last.elapsed() >= *every {
                systemd::notify("WATCHDOG=1");
                *last = Instant::now();
            }
        }
    }

    fn cleanup(&mut self) {
        if !self.handed_over {
            let _ = std::fs::remove_file(&self.settings.server.socket);
        }
    }
}

/// Makes the self-signed pair if needed and checks that the pair the front
/// end will serve loads, so a bad one stops `serve` at once and a HUP
/// never replaces a working front end with one that cannot boot.
fn check_certificate(settings: &Settings) -> Result<(), crate::frontend::tls::TlsError> {
    if settings.proxy.bind.is_empty() {
        return Ok(());
    }
    crate::frontend::tls::ensure_pair(settings)?;
    let (cert, key) = crate::frontend::tls::pair_paths(settings);
    crate::frontend::tls::load(&cert, &key).map(|_| ())
}

/// The state directory with its quarantine (0750) and spool (0700), owned
/// by the workers' account so that they, and only they, can write there.
///
/// Where the master keeps the compiled rules between starts.
pub fn rules_cache_dir(settings: &Settings) -> std::path::PathBuf {
    settings.paths.state_dir.join("rules-cache")
}

/// The rules directory compiled, or loaded from the cache when its files
/// have not changed since they were last compiled (`scan::compile_cached`).
fn compile_rules(settings: &Settings) -> Result<crate::scan::Compiled, crate::scan::RulesError> {
    let dir = crate::scan::rules_dir(settings.yara.rules_dir.as_deref());
    let started = Instant::now();
    let (compiled, outcome) = crate::scan::compile_cached(
        dir.as_deref(),
        settings.yara.parts(),
        &rules_cache_dir(settings),
    )?;
    let ms = started.elapsed().as_millis() as u64;
    match outcome {
        crate::scan::CacheOutcome::Hit => {
            tracing::info!(
                ms,
                "YARA rules unchanged: compiled form loaded from the cache"
            )
        }
        crate::scan::CacheOutcome::Stored => {
            tracing::info!(ms, "YARA rules compiled and cached")
        }
        crate::scan::CacheOutcome::NotStored(why) => {
            tracing::warn!(ms, reason = %why, "YARA rules compiled, but not cached")
        }
    }
    Ok(compiled)
}

/// A master running as root re-owns these directories, so each is opened
/// without following a symlink (a worker's account that planted
/// `quarantine -> /etc` gets a refusal, not /etc) and changed through that
/// descriptor; and one that already holds files is taken over only if it
/// is the service account's already: a `paths.state_dir` typo must not
/// hand `/etc` to it.
fn ensure_state_dirs(
    settings: &Settings,
    account: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
) -> io::Result<()> {
    let state = &settings.paths.state_dir;
    for (dir, mode) in [
        (state.clone(), 0o750),
        (crate::storage::local::quarantine_dir(settings), 0o750),
        (crate::intake::spool::spool_dir(settings), 0o700),
        (crate::storage::fetch_dir(settings), 0o700),
    ] {
        prepare_dir(&dir, mode, account)?;
    }
    Ok(())
}

fn prepare_dir(
    dir: &std::path::Path,
    mode: u32,
    account: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{} is not a directory (a symlink, or something else): {e}",
                    dir.display()
                ),
            )
        })?;
    let owner = account.map_or_else(nix::unistd::Uid::effective, |(uid, _)| uid);
    let meta = handle.metadata()?;
    if meta.uid() != owner.as_raw() {
        // Listed through the descriptor: the very directory opened above.
        let listed = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
        if std::fs::read_dir(listed)?.next().is_some() {
            return Err(io::Error::other(format!(
                "{} is not empty and belongs to uid {}, not the service account (uid {owner}); \
                 refusing to take it over: check paths.state_dir, or give the directory to \
                 the service account yourself",
                dir.display(),
                meta.uid()
            )));
        }
    }
    handle.set_permissions(std::fs::Permissions::from_mode(mode))?;
    if let Some((uid, gid)) = account {
        std::os::unix::fs::fchown(&handle, Some(uid.as_raw()), Some(gid.as_raw()))?;
    }
    Ok(())
}
