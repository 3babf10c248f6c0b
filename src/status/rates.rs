//! Requests per second and latency over the last minutes, for the status
//! page. The scoreboard only holds totals since the node started, so each
//! worker keeps a small ring of those totals, sampled on a timer; a window's
//! rate is the difference between now and the sample at its start. A worker
//! younger than a window shows what it has seen, and says how long that is.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::scoreboard::{monotonic_ms, Scoreboard, SlotState, BUCKETS, ROUTES};

/// How often totals are sampled, and how many samples are kept (five
/// minutes and one more, so the oldest window has a start).
const EVERY: Duration = Duration::from_secs(5);
const KEEP: usize = 61;

/// The node's request totals at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    pub at_ms: u64,
    pub requests: u64,
    pub latency_sum_us: u64,
    /// Requests per latency bucket (not cumulative); requests slower than
    /// the last bound are in `requests` only.
    pub buckets: [u64; BUCKETS.len()],
}

impl Totals {
    /// Sums every slot that counts requests: the retired totals and each
    /// live child's.
    pub fn read(board: &Scoreboard) -> Self {
        let mut t = Totals {
            at_ms: monotonic_ms(),
            requests: 0,
            latency_sum_us: 0,
            buckets: [0; BUCKETS.len()],
        };
        let slots = std::iter::once(0).chain(
            board
                .child_slots()
                .filter(|&i| board.slot(i).state() != SlotState::Free),
        );
        for i in slots {
            let s = board.slot(i);
            for r in 0..ROUTES {
                t.requests += s.latency_count[r].load(Relaxed);
                t.latency_sum_us += s.latency_sum_us[r].load(Relaxed);
                for (b, n) in t.buckets.iter_mut().enumerate() {
                    *n += s.latency_buckets[r][b].load(Relaxed);
                }
            }
        }
        t
    }
}

/// What happened between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub seconds: f64,
    pub requests: u64,
    pub per_second: f64,
    /// Mean time to answer, when any request was answered.
    pub mean_seconds: Option<f64>,
    /// The upper bound of the latency bucket holding the 95th percentile;
    /// `None` without requests, infinite past the last bucket.
    pub p95_at_most: Option<f64>,
}

/// The change from `start` to `end`. Totals may dip for a moment while a
/// dead worker's counters move to the retired slot; such a dip counts as 0.
pub fn window(start: &Totals, end: &Totals) -> Window {
    let seconds = end.at_ms.saturating_sub(start.at_ms) as f64 / 1000.0;
    let requests = end.requests.saturating_sub(start.requests);
    let sum_us = end.latency_sum_us.saturating_sub(start.latency_sum_us);
    let buckets: Vec<u64> = (0..BUCKETS.len())
        .map(|b| end.buckets[b].saturating_sub(start.buckets[b]))
        .collect();
    let p95_at_most = (requests > 0).then(|| {
        let need = (requests as f64 * 0.95).ceil() as u64;
        let mut seen = 0;
        for (b, n) in buckets.iter().enumerate() {
            seen += n;
            if seen >= need {
                return BUCKETS[b];
            }
        }
        f64::INFINITY
    });
    Window {
        seconds,
        requests,
        per_second: if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        },
        mean_seconds: (requests > 0).then(|| sum_us as f64 / 1e6 / requests as f64),
        p95_at_most,
    }
}

/// This worker's ring of samples.
#[derive(Clone, Default)]
pub struct Rates(Arc<Mutex<VecDeque<Totals>>>);

impl Rates {
    fn push(&self, t: Totals) {
        let mut ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(t);
    }

    /// Samples the scoreboard for as long as the worker runs.
    pub async fn sample(self, board: Arc<Scoreboard>) {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            self.push(Totals::read(&board));
        }
    }

    /// One window per minute back from `now`, newest first, as far back as
    /// the samples go (the oldest may be shorter than a minute).
    pub fn minutes(&self, now: &Totals) -> Vec<Window> {
        let ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let mut end = *now;
        for _ in 0..5 {
            let boundary = end.at_ms.saturating_sub(60_000);
            // The newest sample at or before the boundary; failing that
            // the oldest one, which still starts a (shorter) window.
            let start = ring
                .iter()
                .rev()
                .find(|s| s.at_ms <= boundary && s.at_ms < end.at_ms)
                .or_else(|| ring.front().filter(|s| s.at_ms < end.at_ms));
            let Some(start) = start else { break };
            out.push(window(start, &end));
            if start.at_ms > boundary {
                break;
            }
            end = *start;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, requests: u64, fast: u64) -> Totals {
        let mut buckets = [0; BUCKETS.len()];
        buckets[0] = fast;
        buckets[BUCKETS.len() - 1] = requests - fast;
        Totals {
            at_ms: ms,
            requests,
            latency_sum_us: requests * 1000,
            buckets,
        }
    }

    #[test]
    fn a_window_is_the_difference_of_its_ends() {
        let w = window(&at(0, 100, 100), &at(10_000, 300, 290));
        assert_eq!(w.requests, 200);
        assert_eq!(w.per_second, 20.0);
        assert_eq!(w.mean_seconds, Some(0.001));
        // 190 of 200 fast is exactly 95%.
        assert_eq!(w.p95_at_most, Some(BUCKETS[0]));
        let slow = window(&at(0, 0, 0), &at(1000, 100, 90));
        assert_eq!(slow.p95_at_most, Some(BUCKETS[BUCKETS.len() - 1]));
        let idle = window(&at(0, 5, 5), &at(1000, 5, 5));
        assert_eq!((idle.mean_seconds, idle.p95_at_most), (None, None));
        let dip = window(&at(0, 50, 50), &at(1000, 40, 40));
        assert_eq!(dip.requests, 0);
    }

    #[test]
    fn minutes_go_back_as_far_as_the_samples() {
        let rates = Rates::default();
        assert!(rates.minutes(&at(1_000, 0, 0)).is_empty());
        for i in 0..30u64 {
            rates.push(at(i * 5_000, i * 10, i * 10));
        }
        // Samples cover 0..145 s; now is 150 s.
        let now = at(150_000, 300, 300);
        let m = rates.minutes(&now);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[0].seconds, 60.0);
        assert_eq!(m[0].requests, 120);
        assert_eq!(m[2].seconds, 30.0, "the oldest is what is left");
    }
}
