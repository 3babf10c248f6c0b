//! The master's record of one child: its role, slot and generation, and
//! whether it was asked to leave and why. Kept apart from the supervision
//! (`children`) so that the master's state can hold children without
//! importing the code that supervises them.

use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Role {
    Worker,
    Metrics,
    FrontEnd,
    /// Runs the built-in job kinds (static analysis, webhooks); holds no
    /// socket.
    Runner,
    /// Writes every worker's submissions (`crate::recorder`); one.
    Recorder,
}

/// Why the master asked a child to leave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Retire {
    /// Replaced by a newer generation (HUP).
    Reload,
    /// The pool shrank (TTOU, or fewer `queue.runners`).
    Shrink,
    /// Silent past `timeout`: aborted.
    Timeout,
    /// Past `max_requests`: replaced, and serving until the replacement
    /// is ready.
    Recycle,
    /// Past `max_requests`, replaced, and asked to leave.
    Recycled,
}

pub struct Child {
    pub pid: Pid,
    pub slot: usize,
    pub role: Role,
    pub generation: u64,
    pub started: Instant,
    pub ready_seen: bool,
    pub retiring: Option<Retire>,
    /// Sent the stop signal of a master that is stopping.
    pub stop_sent: bool,
    pub(super) aborted_at: Option<Instant>,
}

impl Child {
    pub fn kill(&self, sig: Signal) {
        let _ = kill(self.pid, sig);
    }

    /// Asks the child to finish what it is doing and leave.
    pub fn retire(&mut self, why: Retire) {
        if self.retiring.is_none() {
            self.retiring = Some(why);
            self.kill(Signal::SIGTERM);
        }
    }
}
