//! Per-client-IP and per-API-key request rates in one-second windows.
//!
//! Counted in this process by default. With `redis.url` set, counts are
//! shared through Redis (INCR on a key per window, expiring after two
//! windows), so every front end of a fleet sees the same totals. When Redis
//! does not answer within a few milliseconds the request is counted in
//! process instead: a rate limiter must never be the reason a request
//! waits or fails. The first fallback is logged, every one is counted in
//! `sandgnat_ratelimit_redis_fallbacks_total`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use crate::scoreboard::Scoreboard;

/// How long a rate check may wait for Redis before counting locally.
const REDIS_BUDGET: Duration = Duration::from_millis(50);

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

    pub fn is_off(&self) -> bool {
        self.per_second == 0
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

    fn over(&self, count: u64) -> bool {
        count > u64::from(self.per_second)
    }
}

/// Counts shared through Redis, with the in-process limiter behind them.
pub struct SharedCounts {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    warned: AtomicBool,
    board: Arc<Scoreboard>,
}

impl SharedCounts {
    /// None when `url` cannot be parsed (logged): counting stays local.
    pub fn new(url: &str, board: Arc<Scoreboard>) -> Option<Self> {
        match redis::Client::open(url) {
            Ok(client) => Some(SharedCounts {
                client,
                conn: OnceCell::new(),
                warned: AtomicBool::new(false),
                board,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "redis.url is not usable; rate limits are counted in process");
                None
            }
        }
    }

    async fn incr(&self, key: &str) -> redis::RedisResult<u64> {
        let conn = self
            .conn
            .get_or_try_init(|| async { ConnectionManager::new(self.client.clone()).await })
            .await?;
        let mut conn = conn.clone();
        let (n, _): (u64, i64) = redis::pipe()
            .atomic()
            .incr(key, 1u64)
            .expire(key, 2)
            .query_async(&mut conn)
            .await?;
        Ok(n)
    }

    /// Counts one request against `limiter` under `key`; false when over.
    pub async fn admit(&self, limiter: &RateLimiter, kind: &str, key: &str) -> bool {
        if limiter.is_off() {
            return true;
        }
        let second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let redis_key = format!("sandgnat:rl:{kind}:{key}:{second}");
        match tokio::time::timeout(REDIS_BUDGET, self.incr(&redis_key)).await {
            Ok(Ok(n)) => !limiter.over(n),
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {REDIS_BUDGET:?}"),
                };
                self.board
                    .header()
                    .ratelimit_fallbacks
                    .fetch_add(1, Relaxed);
                if !self.warned.swap(true, Relaxed) {
                    tracing::warn!(error = %why, "Redis unreachable: rate limits are counted in process until it answers again");
                }
                limiter.admit(key)
            }
        }
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
