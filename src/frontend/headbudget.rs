//! The memory all HTTP/1 request heads in progress may hold together in one
//! front end (`proxy.head_budget_bytes`), and which head gives way when a
//! new one needs room.
//!
//! Why: each head is bounded by gunicorn's limits (about 800 KiB with the
//! defaults) and by `proxy.header_timeout`, and the connections by their
//! caps, but those multiply: thousands of clients that each send most of a
//! large head and then a byte a second make the front end hold gigabytes
//! for the whole timeout. The budget bounds the sum instead.
//!
//! A head is charged for the buffer it holds from its first read that did
//! not complete it (a head that arrives whole in one read, as almost all
//! do, never touches the ledger), and each time its buffer grows. When a
//! charge would pass the budget, heads are evicted until it fits, the
//! costliest first: the one whose buffer buys the least progress, its
//! bytes held divided by the rate at which its bytes arrived (counted from
//! the head's start, with a few KiB of credit so a head that has just
//! begun is not taken for a slow one). A slow client holding a large
//! buffer goes before a slow client holding a small one, and both before a
//! fast one. The head asking may itself be the costliest, and is then the
//! one refused. An evicted head is told through its [`Claim`], answered 503
//! and closed by its own task; its bytes leave the ledger at once, so for
//! a moment the process holds the budget plus the buffers being freed.
//!
//! Rejected: refusing whoever asks when the budget is spent (the slow
//! clients that spent it would keep it, and every fresh client would be
//! refused); a per-connection cap below the head limits (a legitimate
//! large head must still be possible, and thousands of small slow heads
//! are the same attack).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Credit every head gets when its rate is reckoned, so a head that has
/// only begun (a few bytes in a few microseconds, or none yet) does not
/// look slower than one that has trickled for seconds.
const CREDIT: usize = 4096;

/// The ledger of heads in progress, shared by every connection of a front
/// end.
pub struct HeadBudget {
    /// Bytes all heads in progress may hold together (0: no budget).
    limit: usize,
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    used: usize,
    next_id: u64,
    heads: HashMap<u64, Entry>,
}

struct Entry {
    held: usize,
    started: Instant,
    head: Arc<Progress>,
}

/// What a head's task and the ledger both see of it.
#[derive(Default)]
struct Progress {
    /// Bytes of the head received so far (for its rate).
    received: AtomicUsize,
    /// Notified once, when the head is evicted.
    evicted: Notify,
}

/// Why a head may not have the room it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted;

/// One head's place in the ledger; dropping it gives its bytes back.
pub struct Claim {
    budget: Arc<HeadBudget>,
    id: u64,
    head: Arc<Progress>,
}

impl HeadBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(HeadBudget {
            limit,
            ledger: Mutex::new(Ledger::default()),
        })
    }

    /// Enters a head that began at `started` and holds nothing yet.
    pub fn claim(self: &Arc<Self>, started: Instant) -> Claim {
        let head = Arc::new(Progress::default());
        let mut l = self.ledger.lock();
        let id = l.next_id;
        l.next_id += 1;
        l.heads.insert(
            id,
            Entry {
                held: 0,
                started,
                head: head.clone(),
            },
        );
        Claim {
            budget: self.clone(),
            id,
            head,
        }
    }

    /// Bytes held by all heads in progress.
    pub fn used(&self) -> usize {
        self.ledger.lock().used
    }

    /// Heads in progress.
    #[cfg(test)]
    fn heads(&self) -> usize {
        self.ledger.lock().heads.len()
    }
}

impl Ledger {
    /// The head whose buffer buys the least progress: the largest
    /// `held / rate`, where `rate = (received + CREDIT) / elapsed`. Ties go
    /// to the older head.
    fn costliest(&self, now: Instant) -> Option<u64> {
        let cost = |e: &Entry| {
            let elapsed = now.saturating_duration_since(e.started).as_secs_f64();
            let received = e.head.received.load(Relaxed).saturating_add(CREDIT);
            e.held as f64 * elapsed / received as f64
        };
        self.heads
            .iter()
            .max_by(|(ia, a), (ib, b)| cost(a).total_cmp(&cost(b)).then_with(|| ib.cmp(ia)))
            .map(|(id, _)| *id)
    }

    /// Takes `id` out of the ledger and tells its task.
    fn evict(&mut self, id: u64) {
        if let Some(e) = self.heads.remove(&id) {
            self.used -= e.held;
            e.head.evicted.notify_one();
        }
    }
}

impl Claim {
    /// Notes how many bytes of the head have arrived.
    pub fn received(&self, n: usize) {
        self.head.received.store(n, Relaxed);
    }

    /// Charges the head for a buffer of `held` bytes (in place of what it
    /// held before), evicting the costliest heads until the budget holds.
    /// Returns how many other heads were evicted, or `Evicted` if this one
    /// was (now or before).
    pub fn hold(&self, held: usize, now: Instant) -> Result<usize, Evicted> {
        let limit = self.budget.limit;
        let mut l = self.budget.ledger.lock();
        let entry = l.heads.get_mut(&self.id).ok_or(Evicted)?;
        let before = std::mem::replace(&mut entry.held, held);
        l.used = l.used - before + held;
        let mut evicted = 0;
        while limit > 0 && l.used > limit {
            // Never empty here: this head is in the ledger until evicted.
            let Some(victim) = l.costliest(now) else {
                break;
            };
            l.evict(victim);
            if victim == self.id {
                return Err(Evicted);
            }
            evicted += 1;
        }
        Ok(evicted)
    }

    /// Resolves once this head has been evicted.
    pub async fn evicted(&self) {
        self.head.evicted.notified().await;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut l = self.budget.ledger.lock();
        if let Some(e) = l.heads.remove(&self.id) {
            l.used -= e.held;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn heads_within_the_budget_are_all_kept_and_give_their_bytes_back() {
        let budget = HeadBudget::new(10_000);
        let t = Instant::now();
        let a = budget.claim(t);
        let b = budget.claim(t);
        assert_eq!(a.hold(4000, t), Ok(0));
        assert_eq!(b.hold(6000, t), Ok(0));
        assert_eq!(budget.used(), 10_000);
        // Growing one's own buffer is charged the difference only.
        assert_eq!(a.hold(3000, t), Ok(0));
        assert_eq!(budget.used(), 9000);
        drop(a);
        assert_eq!(budget.used(), 6000);
        drop(b);
        assert_eq!((budget.used(), budget.heads()), (0, 0));
    }

    #[test]
    fn over_the_budget_the_slow_head_holding_most_goes_first() {
        let budget = HeadBudget::new(40_000);
        let t = Instant::now();
        // Slow and large: 30 KB held, 20 KB in over ten seconds.
        let slow_large = budget.claim(t);
        slow_large.received(20_000);
        slow_large.hold(30_000, t).unwrap();
        // Slow and small: 4 KB held, 100 bytes in ten seconds.
        let slow_small = budget.claim(t);
        slow_small.received(100);
        slow_small.hold(4000, t).unwrap();
        // Fast: begun a moment ago.
        let now = at(t, 10_000);
        let fast = budget.claim(at(t, 9_990));
        fast.received(6000);
        assert_eq!(fast.hold(8000, now), Ok(1));
        assert!(matches!(slow_large.hold(30_000, now), Err(Evicted)));
        assert_eq!(budget.used(), 12_000);
        // The evicted head's task hears of it even if it was not waiting.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), slow_large.evicted())
                .await
                .expect("the evicted head was told");
        });
        drop(slow_large);
        assert_eq!(budget.used(), 12_000);
        assert_eq!(budget.heads(), 2);
        drop((slow_small, fast));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_head_that_is_itself_the_costliest_is_the_one_refused() {
        let budget = HeadBudget::new(20_000);
        let t = Instant::now();
        let fast = budget.claim(at(t, 9_900));
        fast.received(12_000);
        fast.hold(12_000, at(t, 10_000)).unwrap();
        let slow = budget.claim(t);
        slow.received(10);
        assert_eq!(slow.hold(4000, at(t, 10_000)), Ok(0));
        assert_eq!(slow.hold(10_000, at(t, 10_000)), Err(Evicted));
        assert_eq!(budget.used(), 12_000);
        // Once evicted, always evicted: no charge is taken again.
        assert_eq!(slow.hold(1, at(t, 10_000)), Err(Evicted));
        assert_eq!(budget.used(), 12_000);
    }

    #[test]
    fn many_small_slow_heads_make_room_for_a_new_one() {
        let budget = HeadBudget::new(64 << 10);
        let t = Instant::now();
        let slow: Vec<Claim> = (0..16)
            .map(|_| {
                let c = budget.claim(t);
                c.received(50);
                c.hold(4096, t).unwrap();
                c
            })
            .collect();
        assert_eq!(budget.used(), 64 << 10);
        let now = at(t, 5_000);
        let fresh = budget.claim(now);
        fresh.received(9000);
        // 12 KiB: three of the slow heads give way, the oldest first.
        assert_eq!(fresh.hold(12 << 10, now), Ok(3));
        let gone = slow.iter().filter(|c| c.hold(4096, now).is_err()).count();
        assert_eq!(gone, 3);
        assert!(slow[..3].iter().all(|c| c.hold(4096, now).is_err()));
        assert_eq!(budget.used(), 64 << 10);
    }

    #[test]
    fn no_budget_keeps_every_head() {
        let budget = HeadBudget::new(0);
        let t = Instant::now();
        let heads: Vec<Claim> = (0..100).map(|_| budget.claim(t)).collect();
        for h in &heads {
            assert_eq!(h.hold(1 << 20, t), Ok(0));
        }
        assert_eq!(budget.used(), 100 << 20);
    }
}
