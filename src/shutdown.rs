//! How a child process is told to stop: a small value passed to everything
//! that must stop (the accept loop, each connection), not a global flag.
//! Graceful means finish what is in flight and take nothing new.

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
