//! A cap on deliveries per destination address per second, per runner
//! process, so callback URLs cannot aim the appliance at one host as a
//! reflector. Keyed by the resolved addresses, not the name: many names
//! that resolve to one victim share its budget. A delivery over the cap is
//! not dropped: the runner puts the job back for when the window frees.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const WINDOW: Duration = Duration::from_secs(1);
/// Past this many tracked addresses, finished windows are forgotten.
const PRUNE_AT: usize = 4096;

pub struct HostLimiter {
    per_second: u32,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    used: u32,
}

impl HostLimiter {
    /// `per_second`: deliveries one address may get in one second (0 is
    /// taken as 1: the cap may slow deliveries, never stop them).
    pub fn new(per_second: u32) -> Self {
        HostLimiter {
            per_second: per_second.max(1),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one delivery from the budget of every address in `addrs`
    /// (the connection may go to any of them), or none and says how long
    /// to wait when any of them is spent.
    pub fn admit(&self, addrs: &[IpAddr], now: Instant) -> Result<(), Duration> {
        let mut windows = self.windows.lock();
        if windows.len() > PRUNE_AT {
            windows.retain(|_, w| now.saturating_duration_since(w.start) < WINDOW);
        }
        let mut wait = Duration::ZERO;
        for ip in addrs {
            if let Some(w) = windows.get(ip) {
                let age = now.saturating_duration_since(w.start);
                if age < WINDOW && w.used >= self.per_second {
                    wait = wait.max(WINDOW - age);
                }
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for ip in addrs {
            let w = windows.entry(*ip).or_insert(Window {
                start: now,
                used: 0,
            });
            if now.saturating_duration_since(w.start) >= WINDOW {
                *w = Window {
                    start: now,
                    used: 0,
                };
            }
            w.used += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_each_address_per_second_and_says_how_long_to_wait() {
        let l = HostLimiter::new(3);
        let t0 = Instant::now();
        let victim = [ip("192.0.2.10")];
        for _ in 0..3 {
            assert_eq!(l.admit(&victim, t0), Ok(()));
        }
        let later = t0 + Duration::from_millis(400);
        assert_eq!(l.admit(&victim, later), Err(Duration::from_millis(600)));
        // Another address has its own budget.
        assert_eq!(l.admit(&[ip("192.0.2.11")], later), Ok(()));
        // The next window admits again.
        assert_eq!(l.admit(&victim, t0 + WINDOW), Ok(()));
    }

    #[test]
    fn a_name_with_several_addresses_spends_all_of_them_or_none() {
        let l = HostLimiter::new(1);
        let t0 = Instant::now();
        assert_eq!(l.admit(&[ip("2001:db8::1")], t0), Ok(()));
        // A second name whose answer includes the spent address waits,
        // and the other address's budget is left untouched.
        let both = [ip("198.51.100.7"), ip("2001:db8::1")];
        assert!(l.admit(&both, t0).is_err());
        assert_eq!(l.admit(&[ip("198.51.100.7")], t0), Ok(()));
    }

    #[test]
    fn forgets_finished_windows_when_many_addresses_were_seen() {
        let l = HostLimiter::new(1);
        let t0 = Instant::now();
        for i in 0..=PRUNE_AT as u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(l.admit(&[a], t0), Ok(()));
        }
        assert!(l.windows.lock().len() > PRUNE_AT);
        assert_eq!(l.admit(&[ip("192.0.2.1")], t0 + WINDOW), Ok(()));
        assert_eq!(l.windows.lock().len(), 1);
    }
}
