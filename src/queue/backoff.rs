//! Retry delays: exponential in the attempt number, with jitter so that
//! jobs that failed together do not all come back together, and capped.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub fn from_settings(q: &crate::config::Queue) -> Self {
        Backoff {
            base: Duration::from_secs_f64(q.retry_base),
            cap: Duration::from_secs_f64(q.retry_cap),
        }
    }

    /// The wait before the retry that follows failed attempt `attempt`
    /// (1-based): `base * 2^(attempt-1)` plus up to 25 % jitter, never
    /// above `cap`.
    pub fn delay(&self, attempt: i32) -> Duration {
        let exp = attempt.clamp(1, 32) - 1;
        let plain = self.base.as_secs_f64() * 2f64.powi(exp);
        let jitter = 1.0 + rand::random::<f64>() * 0.25;
        Duration::from_secs_f64((plain * jitter).min(self.cap.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_with_bounded_jitter() {
        let b = Backoff {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
        };
        for attempt in 1..=4 {
            let plain = 2.0 * 2f64.powi(attempt - 1);
            let d = b.delay(attempt).as_secs_f64();
            assert!(d >= plain && d <= plain * 1.25, "attempt {attempt}: {d}");
        }
        assert_eq!(b.delay(10), Duration::from_secs(60));
        assert_eq!(b.delay(i32::MAX), Duration::from_secs(60));
    }
}
