//! Caps on the connections the front end holds: in all
//! (`proxy.max_connections`) and per client address
//! (`proxy.max_connections_per_ip`), so that one client, or many, cannot
//! make it hold connections (and their buffers) without bound.
//!
//! [`Capped`] stands in front of pingora's connection handling as its
//! `ServerApp`: a connection is counted from the moment pingora hands it
//! over (after the TLS handshake, which pingora bounds itself) until pingora
//! is done with it, keep-alive requests and HTTP/2 streams included. A
//! connection over a cap is answered at once with a 503 in the appliance's
//! JSON format and closed (HTTP/2, which cannot take an HTTP/1 answer, is
//! only closed), and counted in `sandgnat_frontend_connections_refused_total`.
//!
//! IPv6 clients are counted by their /64: a single host usually holds a
//! whole /64 and could otherwise spread its connections over addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use async_trait::async_trait;
use http::StatusCode;
use parking_lot::Mutex;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;

use super::limits::Refusal;
use crate::config::Settings;
use crate::scoreboard::{Scoreboard, CONNECTION_REFUSALS};

/// Why a connection was refused, as the metric labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Total,
    PerIp,
}

impl Over {
    fn index(self) -> usize {
        match self {
            Over::Total => 0,
            Over::PerIp => 1,
        }
    }

    pub fn label(self) -> &'static str {
        CONNECTION_REFUSALS[self.index()]
    }
}

/// The counts, and the caps they are held to (0: no cap).
pub struct Caps {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it gives its place back.
pub struct Permit {
    caps: Arc<Caps>,
    key: Option<IpAddr>,
}

impl Caps {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Caps {
            max_total,
            max_per_ip,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Counts a new connection from `peer` (none for a Unix socket), or
    /// says which cap it is over.
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Permit, Over> {
        let key = peer.map(client_key);
        let mut c = self.counts.lock();
        if self.max_total > 0 && c.total >= self.max_total {
            return Err(Over::Total);
        }
        if let Some(k) = key {
            let n = c.per_ip.get(&k).copied().unwrap_or(0);
            if self.max_per_ip > 0 && n >= self.max_per_ip {
                return Err(Over::PerIp);
            }
            c.per_ip.insert(k, n + 1);
        }
        c.total += 1;
        Ok(Permit {
            caps: self.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let c = self.counts.lock();
        (c.total, c.per_ip.len())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.caps.counts.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(k) = self.key {
            if let Some(n) = c.per_ip.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    c.per_ip.remove(&k);
                }
            }
        }
    }
}

/// The address a client is counted under: itself for IPv4 (and IPv4
/// mapped into IPv6), its /64 for IPv6.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The front end's connection handling with the caps in front of it.
pub struct Capped<A> {
    inner: Arc<A>,
    caps: Arc<Caps>,
    board: Arc<Scoreboard>,
}

impl<A> Capped<A> {
    pub fn new(inner: A, settings: &Settings, board: Arc<Scoreboard>) -> Self {
        let p = &settings.proxy;
        Capped {
            inner: Arc::new(inner),
            caps: Caps::new(
                usize::try_from(p.max_connections).unwrap_or(usize::MAX),
                usize::try_from(p.max_connections_per_ip).unwrap_or(usize::MAX),
            ),
            board,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Capped<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let _permit = match self.caps.admit(peer) {
            Ok(p) => p,
            Err(over) => {
                self.board.header().connections_refused[over.index()].fetch_add(1, Relaxed);
                tracing::debug!(peer = ?peer, reason = over.label(), "connection refused");
                if !matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
                    super::head::answer(&mut stream, &refusal(over)).await;
                }
                return None;
            }
        };
        // The inner app serves every request on the connection before it
        // returns (pingora's HTTP app loops over keep-alive itself), so
        // the permit is held for the connection's whole life.
        let mut next = self.inner.process_new(stream, shutdown).await;
        while let Some(s) = next {
            next = self.inner.process_new(s, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

fn refusal(over: Over) -> Refusal {
    Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "too_many_connections",
        message: match over {
            Over::Total => "the front end holds proxy.max_connections connections; retry shortly",
            Over::PerIp => {
                "this client holds proxy.max_connections_per_ip connections; close one or retry shortly"
            }
        }
        .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn each_cap_holds_and_a_closed_connection_gives_its_place_back() {
        let caps = Caps::new(5, 2);
        let a1 = caps.admit(ip("192.0.2.1")).unwrap();
        let _a2 = caps.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(caps.admit(ip("192.0.2.1")).err(), Some(Over::PerIp));
        drop(a1);
        let _a3 = caps.admit(ip("192.0.2.1")).unwrap();
        let _b1 = caps.admit(ip("192.0.2.2")).unwrap();
        let _b2 = caps.admit(ip("192.0.2.2")).unwrap();
        let _c1 = caps.admit(None).unwrap();
        assert_eq!(caps.admit(ip("192.0.2.3")).err(), Some(Over::Total));
        assert_eq!(caps.held(), (5, 2));
    }

    #[test]
    fn zero_means_no_cap_and_nothing_is_kept_for_a_gone_client() {
        let caps = Caps::new(0, 0);
        let held: Vec<_> = (0..1000)
            .map(|_| caps.admit(ip("192.0.2.1")).unwrap())
            .collect();
        assert_eq!(caps.held(), (1000, 1));
        drop(held);
        assert_eq!(caps.held(), (0, 0));
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let caps = Caps::new(0, 2);
        let _a = caps.admit(ip("2001:db8:1:2::1")).unwrap();
        let _b = caps.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(caps.admit(ip("2001:db8:1:2::77")).err(), Some(Over::PerIp));
        caps.admit(ip("2001:db8:1:3::1")).unwrap();
        // An IPv4 client seen through a dual-stack socket is itself.
        let _m = caps.admit(ip("::ffff:192.0.2.9")).unwrap();
        let _n = caps.admit(ip("192.0.2.9")).unwrap();
        assert_eq!(caps.admit(ip("192.0.2.9")).err(), Some(Over::PerIp));
    }
}
