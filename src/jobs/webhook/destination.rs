//! Where a webhook may go. The URL must be `http` or `https` with a host;
//! the host is resolved here and every address is checked against the
//! ranges a callback must not reach (loopback, private, link-local,
//! tunnels that hide where they lead, ...) unless
//! `queue.webhook_allow_private`; addresses that embed an IPv4 address
//! (mapped, 6to4, NAT64) are judged by it. The caller then connects to one
//! of the addresses that passed, never to the name again, so a DNS answer
//! that changes between the check and the connection (rebinding) cannot
//! smuggle a request to an internal address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::Uri;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A parsed callback URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub scheme: Scheme,
    /// The host without IPv6 brackets: a name, or an address literal.
    pub host: String,
    pub port: u16,
    /// For the `Host` header: the URL's authority as written.
    pub authority: String,
    pub path_and_query: String,
}

/// Why a destination is refused. Permanent: retrying will not help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Target {
    pub fn parse(url: &str) -> Result<Target, Refused> {
        let uri: Uri = url
            .parse()
            .map_err(|e| Refused(format!("callback URL {url:?} does not parse: {e}")))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            other => {
                return Err(Refused(format!(
                    "callback URL scheme {other:?} refused: only http and https"
                )))
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| Refused(format!("callback URL {url:?} has no host")))?;
        if authority.as_str().contains('@') {
            return Err(Refused(
                "credentials in a callback URL are refused; the receiver checks the signature instead"
                    .into(),
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(Refused(format!("callback URL {url:?} has no host")));
        }
        let port = authority.port_u16().unwrap_or(match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        });
        Ok(Target {
            scheme,
            host,
            port,
            authority: authority.as_str().to_string(),
            path_and_query: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
        })
    }
}

/// Why an address is not a public unicast address, if it is not.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "unspecified (0.0.0.0/8)"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([10, 0, 0, 0], 8, "private (RFC 1918)"),
        ([172, 16, 0, 0], 12, "private (RFC 1918)"),
        ([192, 168, 0, 0], 16, "private (RFC 1918)"),
        ([169, 254, 0, 0], 16, "link-local"),
        (
            [100, 64, 0, 0],
            10,
            "shared address space (CGNAT, RFC 6598)",
        ),
        ([192, 0, 0, 0], 24, "IETF protocol assignments"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([198, 18, 0, 0], 15, "benchmarking"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved or broadcast"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // Addresses that carry an IPv4 address are judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    if seg[0..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated): ::a.b.c.d
        let v4 = Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        );
        return forbidden_v4(v4).or(Some("IPv4-compatible"));
    }
    if seg[0] == 0x64 && seg[1] == 0xff9b {
        // NAT64 (64:ff9b::/96 and the local-use 64:ff9b:1::/48).
        let v4 = Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        );
        return forbidden_v4(v4).or((seg[2] != 0).then_some("local-use NAT64"));
    }
    if seg[0] == 0x2002 {
        // 6to4 carries the IPv4 address in bits 16..48.
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        );
        return forbidden_v4(v4);
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo (2001::/32) tunnels to an IPv4 address the relay picks,
        // obfuscated in the low bits: whatever it reaches, it is not the
        // destination this check saw.
        return Some("Teredo tunnel (2001::/32)");
    }
    match seg[0] {
        s if s & 0xfe00 == 0xfc00 => Some("unique local (fc00::/7)"),
        s if s & 0xffc0 == 0xfe80 => Some("link-local"),
        s if s & 0xffc0 == 0xfec0 => Some("site-local (deprecated)"),
        s if s & 0xff00 == 0xff00 => Some("multicast"),
        0x2001 if seg[1] == 0x0db8 => Some("documentation"),
        0x2001 if seg[1] == 0x0002 && seg[2] == 0 => Some("benchmarking (2001:2::/48)"),
        0x0100 if seg[1..4] == [0, 0, 0] => Some("discard-only"),
        _ => None,
    }
}

/// The addresses of `target` a webhook may connect to, in resolver order.
/// `Err(Refused)` when none may be used; a resolver failure is returned
/// as `Ok(Err(..))` because it may clear up (a retry is worth it).
pub async fn resolve(
    target: &Target,
    allow_private: bool,
) -> Result<Result<Vec<SocketAddr>, String>, Refused> {
    let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
            Ok(found) => found.collect(),
            Err(e) => return Ok(Err(format!("cannot resolve {}: {e}", target.host))),
        },
    };
    if allow_private {
        return Ok(Ok(addrs));
    }
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    for addr in addrs {
        match forbidden(addr.ip()) {
            None => allowed.push(addr),
            Some(why) => refused.push(format!("{} ({why})", addr.ip())),
        }
    }
    if allowed.is_empty() {
        return Err(Refused(format!(
            "callback host {} resolves only to addresses webhooks may not reach: {}; \
             set queue.webhook_allow_private = true to allow them",
            target.host,
            refused.join(", ")
        )));
    }
    Ok(Ok(allowed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no(ip: &str) -> bool {
        forbidden(ip.parse().unwrap()).is_some()
    }

    #[test]
    fn ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b::c0a8:101",
            "64:ff9b:1::a9fe:a9fe",
            "2002:c0a8:0101::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2002:0a00:0001:1::1",
            // Teredo: server 65.54.227.120, client 192.0.2.45 (obfuscated),
            // and one whose client part is a public address.
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
            "2001::1",
            "2001:2::1",
        ] {
            assert!(no(ip), "{ip} should be refused");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
            "2001:4860:4860::8888",
        ] {
            assert!(!no(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn urls() {
        let t = Target::parse("https://hooks.example.test/a/b?x=1").unwrap();
        assert_eq!(t.scheme, Scheme::Https);
        assert_eq!((t.host.as_str(), t.port), ("hooks.example.test", 443));
        assert_eq!(t.path_and_query, "/a/b?x=1");
        let t = Target::parse("http://[::1]:8080").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
        assert_eq!(t.path_and_query, "/");
        assert_eq!(t.authority, "[::1]:8080");
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("http://user:pw@x/").is_err());
        assert!(Target::parse("/relative").is_err());
    }

    #[tokio::test]
    async fn literal_addresses_are_checked_without_dns() {
        let t = Target::parse("http://127.0.0.1:9/hook").unwrap();
        let err = resolve(&t, false).await.unwrap_err();
        assert!(err.0.contains("loopback"), "{err}");
        assert!(err.0.contains("webhook_allow_private"), "{err}");
        let ok = resolve(&t, true).await.unwrap().unwrap();
        assert_eq!(ok, vec!["127.0.0.1:9".parse().unwrap()]);
    }
}
