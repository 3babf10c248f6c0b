//! Wake-ups between the processes that enqueue and those that wait to
//! claim, over Postgres LISTEN/NOTIFY (so they cross nodes too).
//!
//! `Notifier` sends after commit and coalesces: at most one NOTIFY per
//! queue per `COALESCE` window per process, however many jobs commit in it,
//! so the submit path never pays for a NOTIFY inside its transaction.
//! `Wakeups` holds one LISTEN connection per process and turns each
//! notification into a bump of that queue's watch channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

/// The one channel; the payload is the queue's name.
pub const CHANNEL: &str = "sandgnat_jobs";
const COALESCE: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Sent {
    last: Option<Instant>,
    pending: bool,
}

#[derive(Clone)]
pub struct Notifier {
    db: PgPool,
    sent: Arc<Mutex<HashMap<String, Sent>>>,
}

impl Notifier {
    pub fn new(db: PgPool) -> Self {
        Notifier {
            db,
            sent: Arc::default(),
        }
    }

    /// Jobs were committed on `queue`: wake its claimers, soon. Never
    /// blocks and never fails the caller; a lost wake-up costs a claimer at
    /// most its one-second poll.
    pub fn poke(&self, queue: &str) {
        let delay = {
            let mut sent = self.sent.lock();
            let entry = sent.entry(queue.to_owned()).or_default();
            if entry.pending {
                return;
            }
            entry.pending = true;
            match entry.last {
                Some(last) if last.elapsed() < COALESCE => COALESCE - last.elapsed(),
                _ => Duration::ZERO,
            }
        };
        let this = self.clone();
        let queue = queue.to_owned();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(entry) = this.sent.lock().get_mut(&queue) {
                entry.pending = false;
                entry.last = Some(Instant::now());
            }
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&queue)
                .execute(&this.db)
                .await
            {
                tracing::debug!(error = %e, queue, "queue wake-up not sent");
            }
        });
    }
}

/// Per-process listener; started on first use, reconnecting on failure.
#[derive(Clone)]
pub struct Wakeups {
    db: PgPool,
    inner: Arc<Mutex<WakeInner>>,
}

#[derive(Default)]
struct WakeInner {
    started: bool,
    queues: HashMap<String, watch::Sender<u64>>,
}

impl Wakeups {
    pub fn new(db: PgPool) -> Self {
        Wakeups {
            db,
            inner: Arc::default(),
        }
    }

    /// A receiver that changes whenever `queue` may have new work. Mark it
    /// seen before trying to claim, then wait on `changed()`: a wake-up
    /// that lands between the two is not lost.
    pub fn subscribe(&self, queue: &str) -> watch::Receiver<u64> {
        let mut inner = self.inner.lock();
        if !inner.started {
            inner.started = true;
            tokio::spawn(listen(self.db.clone(), self.inner.clone()));
        }
        inner
            .queues
            .entry(queue.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

fn bump(inner: &Mutex<WakeInner>, queue: Option<&str>) {
    let inner = inner.lock();
    for (name, tx) in &inner.queues {
        if queue.is_none_or(|q| q == name) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

async fn listen(db: PgPool, inner: Arc<Mutex<WakeInner>>) {
    loop {
        match PgListener::connect_with(&db).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(CHANNEL).await {
                    tracing::warn!(error = %e, "cannot LISTEN for queue wake-ups");
                } else {
                    // Anything may have been enqueued while we were not
                    // listening: let every waiter look once.
                    bump(&inner, None);
                    loop {
                        match listener.recv().await {
                            Ok(n) => bump(&inner, Some(n.payload())),
                            Err(e) => {
                                tracing::warn!(error = %e, "queue wake-up listener lost");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "queue wake-up listener cannot connect"),
        }
        // Waiters still poll once a second meanwhile.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
