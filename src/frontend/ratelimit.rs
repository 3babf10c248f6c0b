//! Per-client-IP and per-API-key request rates, counted in this process
//! in one-second windows. Redis-shared counting (for several nodes) is
//! not built yet; one front end per node makes in-process counts exact
//! for a single node.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Counts requests per key in the current one-second window.
pub struct RateLimiter {
    per_second: u32,
    start: Instant,
    state: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    second: u64,
    counts: HashMap<String, u32>,
}

impl RateLimiter {
    /// `per_second == 0` turns the limit off.
    pub fn new(per_second: u32) -> Self {
        RateLimiter {
            per_second,
            start: Instant::now(),
            state: Mutex::new(Window::default()),
        }
    }

    /// Counts one request for `key`; false when it is over the limit.
    pub fn admit(&self, key: &str) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let second = self.start.elapsed().as_secs();
        // A poisoned lock only means another request panicked mid-count;
        // the counts are still usable.
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if w.second != second {
            // A new window: forgetting every key also bounds memory to the
            // clients seen in one second.
            w.second = second;
            w.counts.clear();
        }
        let n = w.counts.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n <= self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_limit_is_refused_per_key() {
        let rl = RateLimiter::new(3);
        let start = rl.start.elapsed().as_secs();
        let admitted = (0..5).filter(|_| rl.admit("a")).count();
        // Only meaningful if the five calls fell in one window.
        if rl.start.elapsed().as_secs() == start {
            assert_eq!(admitted, 3);
            assert!(rl.admit("b"), "another key has its own budget");
        }
    }

    #[test]
    fn zero_means_off() {
        let rl = RateLimiter::new(0);
        assert!((0..10_000).all(|_| rl.admit("a")));
    }
}
