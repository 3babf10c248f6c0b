//! The master's children: spawning them, noticing they are ready, aborting
//! the silent ones, reaping the dead with the reason they went, and keeping
//! the pool at its target size (with back-off when workers cannot boot),
//! keeping one front end serving the public sockets, and keeping
//! `queue.runners` job runners claiming the appliance's own jobs.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rand::Rng;

use super::roster::{Child, Retire, Role};
use super::{spawn, Arbiter, Phase, ABORT_GRACE};
use crate::child::EXIT_BOOT_ERROR;
use crate::scoreboard::{
    monotonic_ms, SlotState, ROLE_FRONTEND, ROLE_METRICS, ROLE_RECORDER, ROLE_RUNNER, ROLE_WORKER,
};
use crate::sockets::{METRICS, RECORDER, WORKERS};
use crate::systemd;

impl Arbiter {
    fn spawn_child(&mut self, role: Role) {
        let Some(slot) = self.board.claim_slot() else {
            tracing::error!("scoreboard is full; not spawning");
            return;
        };
        let s = self.board.slot(slot);
        s.role.store(
            match role {
                Role::Worker => ROLE_WORKER,
                Role::Metrics => ROLE_METRICS,
                Role::FrontEnd => ROLE_FRONTEND,
                Role::Runner => ROLE_RUNNER,
                Role::Recorder => ROLE_RECORDER,
            },
            Relaxed,
        );
        s.beat();
        let mut args: Vec<OsString> = vec![
            match role {
                Role::Worker => "worker".into(),
                Role::Metrics => "metrics-listener".into(),
                Role::FrontEnd => "front-end".into(),
                Role::Runner => "job-runner".into(),
                Role::Recorder => "recorder".into(),
            },
            "--slot".into(),
            slot.to_string().into(),
            "--master-pid".into(),
            std::process::id().to_string().into(),
        ];
        let mut fds = vec![self.board.fd().as_raw_fd(), self.settings_fd.as_raw_fd()];
        match role {
            Role::Worker => {
                let srv = &self.settings.server;
                if srv.max_requests > 0 {
                    let jitter = rand::thread_rng().gen_range(0..=srv.max_requests_jitter);
                    args.push("--max-requests".into());
                    args.push((srv.max_requests + jitter).to_string().into());
                }
                if let Some(l) = self.listeners.get(WORKERS) {
                    fds.push(l.fd.as_raw_fd());
                }
                fds.push(self.rules_fd.as_raw_fd());
            }
            Role::Metrics => {
                // The metrics socket first, then every listener whose
                // accept queue it reports.
                let mut names = Vec::new();
                if let Some(l) = self.listeners.get(METRICS) {
                    fds.push(l.fd.as_raw_fd());
                }
                for l in &self.listeners.all {
                    names.push(l.name.clone());
                    fds.push(l.fd.as_raw_fd());
                }
                args.push("--listeners".into());
                args.push(names.join(",").into());
            }
            Role::FrontEnd => {
                // Only the public sockets: the front end reaches workers
                // by connecting to their socket like any client.
                let mut names = Vec::new();
                for l in self.listeners.public() {
                    names.push(l.name.clone());
                    fds.push(l.fd.as_raw_fd());
                }
                args.push("--listeners".into());
                args.push(names.join(",").into());
            }
            // The scoreboard and the settings only: a runner reaches the
            // database and the quarantine itself and listens on nothing.
            Role::Runner => {}
            Role::Recorder => {
                if let Some(l) = self.listeners.get(RECORDER) {
                    fds.push(l.fd.as_raw_fd());
                }
            }
        }
        match spawn::spawn(&self.exe, &args, &fds) {
            Ok(child) => {
                let pid = Pid::from_raw(child.id() as i32);
                // Reaping is done with waitpid in `reap_children`.
                drop(child);
                self.board
                    .slot(slot)
                    .pid
                    .store(pid.as_raw() as u32, Relaxed);
                tracing::info!(event = "post_fork", pid = pid.as_raw(), slot, role = ?role, "spawned child");
                self.children.push(Child {
                    pid,
                    slot,
                    role,
                    generation: match role {
                        Role::FrontEnd => self.frontend_generation,
                        _ => self.generation,
                    },
                    started: Instant::now(),
                    ready_seen: false,
                    retiring: None,
                    stop_sent: false,
                    aborted_at: None,
                });
            }
            Err(e) => {
                self.board.release_slot(slot);
                tracing::error!(error = %e, exe = %self.exe.display(), "cannot spawn child");
                self.next_spawn = Instant::now() + Duration::from_secs(1);
            }
        }
    }

    /// Collects every child that exited and records why it went.
    pub(super) fn reap_children(&mut self) {
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => status,
            };
            let (pid, code, signal) = match status {
                WaitStatus::Exited(pid, code) => (pid, Some(code), None),
                WaitStatus::Signaled(pid, sig, _) => (pid, None, Some(sig)),
                _ => continue,
            };
            if let Some(up) = &mut self.upgrade {
                if up.pid == pid.as_raw() {
                    up.exited = true;
                    continue;
                }
            }
            let Some(i) = self.children.iter().position(|c| c.pid == pid) else {
                continue;
            };
            let child = self.children.swap_remove(i);
            self.child_exited(child, code, signal);
        }
    }

    fn child_exited(&mut self, child: Child, code: Option<i32>, signal: Option<Signal>) {
        let slot = self.board.slot(child.slot);
        let state = slot.state();
        let reason = match (child.retiring, state) {
            (Some(Retire::Timeout), _) => Some("timeout"),
            (Some(Retire::Reload), _) => Some("reload"),
            (Some(Retire::Recycle | Retire::Recycled), _) => Some("max_requests"),
            (Some(Retire::Shrink), _) => None,
            (None, _) if matches!(self.phase, Phase::Stopping { .. }) => None,
            (None, SlotState::Recycling) => Some("max_requests"),
            (None, SlotState::BootFailed | SlotState::Booting) => Some("boot_error"),
            (None, _) if code == Some(0) => Some("exit"),
            (None, _) => Some("crash"),
        };
        tracing::info!(
            event = "worker_exit",
            pid = child.pid.as_raw(),
            role = ?child.role,
            code,
            signal = signal.map(|s| s.as_str()),
            reason = reason.unwrap_or("stopped"),
            "child exited"
        );
        match (child.role, reason) {
            (Role::Worker, Some(r)) => self.board.count_restart(r),
            (Role::Runner, Some(r)) => self.board.count_runner_restart(r),
            _ => {}
        }
        if reason == Some("boot_error") {
            let why = slot.boot_error.load();
            self.last_boot_error = if why.is_empty() {
                format!(
                    "child exited while booting (code {code:?}, signal {:?})",
                    signal.map(|s| s.as_str())
                )
            } else {
                why
            };
            self.boot_failures += 1;
            self.board.header().boot_failures.fetch_add(1, Relaxed);
            let delay = Duration::from_millis(100u64 << self.boot_failures.min(7))
                .min(Duration::from_secs(10));
            tracing::error!(
                pid = child.pid.as_raw(),
                failures = self.boot_failures,
                retry_in_ms = delay.as_millis() as u64,
                reason = %self.last_boot_error,
                role = ?child.role,
                "child failed to boot"
            );
            self.next_spawn = Instant::now() + delay;
            if self.boot_failures >= self.settings.server.max_boot_failures
                && matches!(self.phase, Phase::Running)
            {
                tracing::error!(
                    failures = self.boot_failures,
                    reason = %self.last_boot_error,
                    "workers keep failing to boot; giving up"
                );
                eprintln!(
                    "sandgnat: workers failed to boot {} times in a row; last reason: {}",
                    self.boot_failures, self.last_boot_error
                );
                self.exit_code = EXIT_BOOT_ERROR;
                self.stop(false);
            }
        }
        self.board.release_slot(child.slot);
    }

    /// Aborts workers whose heartbeat is older than `timeout`, then kills
    /// those that ignore the abort.
    pub(super) fn murder_silent_workers(&mut self) {
        let timeout_ms = self.settings.server.timeout * 1000;
        let now = monotonic_ms();
        for child in &mut self.children {
            if let Some(at) = child.aborted_at {
                if at.elapsed() >= ABORT_GRACE {
                    child.kill(Signal::SIGKILL);
                }
                continue;
            }
            let slot = self.board.slot(child.slot);
            let silent_ms = now.saturating_sub(slot.heartbeat_ms.load(Relaxed));
            if silent_ms <= timeout_ms {
                continue;
            }
            let request = slot.stuck_request();
            tracing::error!(
                event = "worker_abort",
                pid = child.pid.as_raw(),
                silent_s = silent_ms / 1000,
                request = request.as_deref().unwrap_or("none"),
                "worker timed out; aborting"
            );
            child.retiring = Some(Retire::Timeout);
            child.aborted_at = Some(Instant::now());
            child.kill(Signal::SIGABRT);
        }
    }

    /// Marks children that finished booting; announces readiness once the
    /// whole pool (or a reload's new generation) is up.
    pub(super) fn notice_ready_children(&mut self) {
        for child in &mut self.children {
            if !child.ready_seen && self.board.slot(child.slot).state() == SlotState::Ready {
                child.ready_seen = true;
                if child.role == Role::Worker {
                    self.boot_failures = 0;
                }
            }
        }
        self.retire_replaced_frontends();
        let ready_now = self.current_workers().filter(|c| c.ready_seen).count() as u32;
        if ready_now < self.target.min(self.settings.server.workers) {
            return;
        }
        // Ready means a client can be served: the front end must be up too,
        // and the recorder that every submission goes through.
        if !self.ready && self.wants_frontend() && !self.frontend_ready() {
            return;
        }
        if !self.ready
            && !self
                .children
                .iter()
                .any(|c| c.role == Role::Recorder && c.ready_seen)
        {
            return;
        }
        if !self.ready {
            self.ready = true;
            tracing::info!(event = "when_ready", workers = ready_now, "ready");
            systemd::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
            if let Some(pipe) = self.upgrade_pipe.take() {
                // Tell the old master it may leave.
                let _ = nix::unistd::write(&pipe, b"R");
            }
        }
        if self.reloading {
            let generation = self.generation;
            for c in self
                .children
                .iter_mut()
                .filter(|c| c.role == Role::Worker && c.generation < generation)
            {
                c.retire(Retire::Reload);
            }
            self.reloading = false;
            tracing::info!(generation, "reload complete");
            systemd::notify("READY=1");
        }
    }

    /// A worker past `max_requests` says so in its slot and goes on
    /// serving: it no longer counts towards the pool, so its replacement
    /// starts at once, and it is asked to leave (it then drains) only once
    /// the pool is whole without it. Leaving first would leave the pool
    /// short for the replacement's boot, empty if it was the only worker.
    fn replace_recycling_workers(&mut self) {
        let board = &self.board;
        for c in self
            .children
            .iter_mut()
            .filter(|c| c.role == Role::Worker && c.retiring.is_none())
        {
            if board.slot(c.slot).state() == SlotState::Recycling {
                tracing::info!(
                    pid = c.pid.as_raw(),
                    "worker past max_requests; starting its replacement"
                );
                c.retiring = Some(Retire::Recycle);
            }
        }
        let ready = self.current_workers().filter(|c| c.ready_seen).count() as u32;
        if ready < self.target {
            return;
        }
        for c in self
            .children
            .iter_mut()
            .filter(|c| c.retiring == Some(Retire::Recycle))
        {
            c.retiring = Some(Retire::Recycled);
            c.kill(Signal::SIGTERM);
        }
    }

    fn wants_frontend(&self) -> bool {
        self.listeners.public().next().is_some()
    }

    fn current_frontend(&self) -> Option<&Child> {
        self.children.iter().find(|c| {
            c.role == Role::FrontEnd
                && c.generation == self.frontend_generation
                && c.retiring.is_none()
        })
    }

    fn frontend_ready(&self) -> bool {
        self.current_frontend().is_some_and(|c| c.ready_seen)
    }

    /// Once the newest front end is ready, older ones (HUP) finish their
    /// requests and leave; until then they keep serving, which is what
    /// keeps a failed new front end from costing any connection.
    fn retire_replaced_frontends(&mut self) {
        if !self.frontend_ready() {
            return;
        }
        let generation = self.frontend_generation;
        for c in self
            .children
            .iter_mut()
            .filter(|c| c.role == Role::FrontEnd && c.generation < generation)
        {
            if c.retiring.is_none() {
                tracing::info!(pid = c.pid.as_raw(), "retiring replaced front end");
            }
            c.retire(Retire::Reload);
        }
    }

    fn current_workers(&self) -> impl Iterator<Item = &Child> {
        self.children.iter().filter(move |c| {
            c.role == Role::Worker && c.generation == self.generation && c.retiring.is_none()
        })
    }

    /// Spawns or retires children to reach the target.
    pub(super) fn manage_workers(&mut self) {
        self.replace_recycling_workers();
        let live = self.current_workers().count() as u32;
        if live > self.target {
            // Retire the oldest first, as gunicorn does on TTOU.
            let generation = self.generation;
            let mut extra: Vec<&mut Child> = self
                .children
                .iter_mut()
                .filter(|c| {
                    c.role == Role::Worker && c.generation == generation && c.retiring.is_none()
                })
                .collect();
            extra.sort_by_key(|c| c.started);
            for c in extra.into_iter().take((live - self.target) as usize) {
                tracing::info!(pid = c.pid.as_raw(), "retiring worker");
                c.retire(Retire::Shrink);
            }
        }
        if Instant::now() < self.next_spawn {
            return;
        }
        // While workers fail to boot, try one at a time.
        let room = if self.boot_failures > 0 { 1 } else { u32::MAX };
        let booting = self.current_workers().filter(|c| !c.ready_seen).count() as u32;
        let wanted = self.target.saturating_sub(live);
        let spawn_now = if self.boot_failures > 0 {
            room.saturating_sub(booting).min(wanted)
        } else {
            wanted
        };
        for _ in 0..spawn_now {
            self.spawn_child(Role::Worker);
        }
        let has_metrics = self
            .children
            .iter()
            .any(|c| c.role == Role::Metrics && c.retiring.is_none());
        if !has_metrics {
            self.spawn_child(Role::Metrics);
        }
        if self.wants_frontend() && self.current_frontend().is_none() {
            self.spawn_child(Role::FrontEnd);
        }
        self.manage_runners();
        self.manage_recorder();
    }

    /// Keeps one recorder of the current generation. One of an older
    /// generation (HUP) is asked to leave once the new one is ready: it
    /// tells its workers to go away and answers what it has read, and they
    /// reconnect to the new one.
    fn manage_recorder(&mut self) {
        let generation = self.generation;
        // Until its successor is ready the old recorder keeps writing what
        // workers send (both accept on the one socket meanwhile), and a
        // successor that cannot boot leaves the node recording rather
        // than queueing in the socket's backlog.
        let successor_ready = self.children.iter().any(|c| {
            c.role == Role::Recorder
                && c.generation == generation
                && c.retiring.is_none()
                && c.ready_seen
        });
        let mut current = false;
        for c in self
            .children
            .iter_mut()
            .filter(|c| c.role == Role::Recorder && c.retiring.is_none())
        {
            if c.generation < generation {
                if !successor_ready {
                    continue;
                }
                tracing::info!(
                    pid = c.pid.as_raw(),
                    "retiring the recorder of an older generation"
                );
                c.retire(Retire::Reload);
            } else {
                current = true;
            }
        }
        if !current {
            self.spawn_child(Role::Recorder);
        }
    }

    fn current_runners(&self) -> impl Iterator<Item = &Child> {
        self.children.iter().filter(move |c| {
            c.role == Role::Runner && c.generation == self.generation && c.retiring.is_none()
        })
    }

    /// Keeps `queue.runners` job runners of the current generation. Older
    /// ones (HUP) and extra ones are asked to leave: each finishes or
    /// abandons the job in hand within `graceful_timeout` on its own.
    fn manage_runners(&mut self) {
        let generation = self.generation;
        let want = self.settings.queue.runners;
        let live = self.current_runners().count() as u32;
        let mut extra = live.saturating_sub(want);
        for c in self
            .children
            .iter_mut()
            .filter(|c| c.role == Role::Runner && c.retiring.is_none())
        {
            if c.generation < generation {
                tracing::info!(
                    pid = c.pid.as_raw(),
                    "retiring job runner of an older generation"
                );
                c.retire(Retire::Reload);
            } else if extra > 0 {
                tracing::info!(pid = c.pid.as_raw(), "retiring job runner");
                c.retire(Retire::Shrink);
                extra -= 1;
            }
        }
        // While children fail to boot, one at a time.
        let booting = self.current_runners().filter(|c| !c.ready_seen).count() as u32;
        let mut spawn_now = want.saturating_sub(live);
        if self.boot_failures > 0 {
            spawn_now = spawn_now.min(1u32.saturating_sub(booting));
        }
        for _ in 0..spawn_now {
            self.spawn_child(Role::Runner);
        }
    }
}
