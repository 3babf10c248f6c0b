//! How a child process is told to stop: a small value passed to everything
//! that must stop (the accept loop, each connection), not a global flag.
//! Graceful means finish what is in flight and take nothing new.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    Running,
    Graceful,
}

/// The sending side, kept by whoever decides to stop.
#[derive(Clone)]
pub struct Trigger(watch::Sender<Stop>);

/// The receiving side, one per task that must stop.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<Stop>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(Stop::Running);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn graceful(&self) {
        self.0.send_if_modified(|s| {
            let changed = *s == Stop::Running;
            *s = Stop::Graceful;
            changed
        });
    }

    pub fn is_stopping(&self) -> bool {
        *self.0.borrow() != Stop::Running
    }
}

impl Shutdown {
    /// Whether a stop was asked for, without waiting.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow() != Stop::Running
    }

    /// Resolves once a stop was asked for (at once if it already was).
    pub async fn requested(&mut self) {
        // An error means every trigger is gone: nobody can ask any more,
        // which is as good as asking.
        let _ = self.0.wait_for(|s| *s != Stop::Running).await;
    }
}

/// The signals a worker or job runner answers, as gunicorn's workers do:
/// TERM stops gracefully, INT and QUIT at once (what is in hand is cut;
/// a runner's job is left to its lease), USR1 reopens the log files.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn register() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }

    /// Answers signals until the process exits; `on_term` is logged when
    /// TERM asks for a graceful stop.
    pub async fn watch(mut self, trigger: Trigger, on_term: &'static str) {
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    tracing::info!("{on_term}");
                    trigger.graceful();
                }
                _ = self.int.recv() => std::process::exit(0),
                _ = self.quit.recv() => std::process::exit(0),
                _ = self.usr1.recv() => crate::logging::reopen(),
            }
        }
    }
}
