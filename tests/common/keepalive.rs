//! Keep-alive clients that post new samples through the TLS front end,
//! over HTTP/1.1 or HTTP/2, and count every request that failed, for the
//! tests that hold reloads, recycling and upgrades to failing none.
//!
//! A client keeps one connection for as long as the server lets it: it
//! connects again only after an answer that said `Connection: close`
//! (HTTP/1.1) or once the connection has gone away after a GOAWAY
//! (HTTP/2). Failed means the request got an answer other than 202, or
//! none: a reset, a broken pipe, an end of stream before the answer. The
//! one exception is what HTTP/2 defines as never processed (RFC 9113
//! §8.7): a stream above a GOAWAY's last stream id, or refused with
//! REFUSED_STREAM. A client may send it again, and these do, on a new
//! connection; that is counted as `refused`, not as a failure.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora_rustls::{ClientConfig, RootCertStore, ServerName, TlsConnector};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Appliance;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// What one client saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    /// Streams the server said it never processed, sent again.
    pub refused: u64,
    pub failures: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.failures.extend(other.failures);
    }
}

/// Clients running until `stop`.
pub struct Posters {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    clients: Vec<(Proto, std::thread::JoinHandle<Tally>)>,
}

/// Starts `n` clients of each protocol in `protos` posting with `key`.
pub fn start(app: &Appliance, key: &str, protos: &[Proto], n: usize) -> Posters {
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let ca = app.dir.join("certs").join("self-signed.pem");
    let mut clients = Vec::new();
    for &proto in protos {
        let connector = connector(&ca, proto);
        for i in 0..n {
            let (stop, connector) = (stop.clone(), connector.clone());
            let accepted = accepted.clone();
            let (addr, key) = (app.tls.clone(), key.to_string());
            let tag = format!("{proto:?}-{i}-{:x}", rand::random::<u64>());
            clients.push((
                proto,
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let client = Client {
                            addr,
                            key,
                            tag,
                            connector,
                            accepted,
                        };
                        match proto {
                            Proto::Http1 => client.run_h1(&stop).await,
                            Proto::Http2 => client.run_h2(&stop).await,
                        }
                    })
                }),
            ));
        }
    }
    Posters {
        stop,
        accepted,
        clients,
    }
}

impl Posters {
    /// 202s so far, all clients together.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until the clients have had `n` more 202s (the load goes on
    /// between the events a test causes).
    pub fn wait_for(&self, n: u64) {
        let until = self.accepted() + n;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.accepted() < until {
            assert!(
                std::time::Instant::now() < deadline,
                "the clients made no progress"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the clients; what each protocol's clients saw, in all.
    pub fn stop(self) -> Vec<(Proto, Tally)> {
        self.stop.store(true, Ordering::SeqCst);
        let mut out: Vec<(Proto, Tally)> = Vec::new();
        for (proto, c) in self.clients {
            let t = c.join().expect("client thread");
            match out.iter_mut().find(|(p, _)| *p == proto) {
                Some((_, all)) => all.add(t),
                None => out.push((proto, t)),
            }
        }
        out
    }
}

/// Asserts that no client failed a request and that each protocol got
/// at least `min_ok` answers.
pub fn assert_none_failed(what: &str, tallies: &[(Proto, Tally)], min_ok: u64) {
    let mut report = String::new();
    for (proto, t) in tallies {
        let mut kinds: Vec<(String, usize)> = Vec::new();
        for f in &t.failures {
            match kinds.iter_mut().find(|(k, _)| k == f) {
                Some((_, n)) => *n += 1,
                None => kinds.push((f.clone(), 1)),
            }
        }
        report.push_str(&format!(
            "{proto:?}: {} accepted, {} refused and sent again, {} failed {kinds:?}\n",
            t.ok,
            t.refused,
            t.failures.len(),
        ));
    }
    eprintln!("{what}:\n{report}");
    for (_, t) in tallies {
        assert!(t.failures.is_empty(), "{what}: requests failed\n{report}");
        assert!(t.ok >= min_ok, "{what}: too few requests\n{report}");
    }
}

/// A client's TLS set-up for `app`, offering only `proto` by ALPN.
pub fn tls_for(app: &Appliance, proto: Proto) -> TlsConnector {
    connector(&app.dir.join("certs").join("self-signed.pem"), proto)
}

/// A new HTTP/2 connection to `app`'s TLS listener, driven on the current
/// runtime.
pub async fn h2_connect(addr: &str, tls: &TlsConnector) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tls.connect(name, tcp).await.expect("TLS handshake");
    let (sender, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

fn connector(ca: &std::path::Path, proto: Proto) -> TlsConnector {
    pingora_rustls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    let pem = std::fs::read(ca).expect("read the appliance's certificate");
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![match proto {
        Proto::Http1 => b"http/1.1".to_vec(),
        Proto::Http2 => b"h2".to_vec(),
    }];
    TlsConnector::from(Arc::new(config))
}

struct Client {
    addr: String,
    key: String,
    tag: String,
    connector: TlsConnector,
    accepted: Arc<AtomicU64>,
}

type Tls = pingora_rustls::ClientTlsStream<TcpStream>;

const ANSWER_WITHIN: Duration = Duration::from_secs(30);

impl Client {
    async fn connect(&self, alpn: &[u8]) -> Tls {
        let tcp = TcpStream::connect(&self.addr).await.expect("connect");
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(alpn),
            "ALPN did not pick {}",
            String::from_utf8_lossy(alpn)
        );
        tls
    }

    /// A new sample of up to 64 KiB: a body that takes a while to send
    /// keeps a request in flight on its connection for longer.
    fn sample(&self, i: u64) -> Bytes {
        let mut bytes = format!("keep-alive sample {} {i}\n", self.tag).into_bytes();
        let len = bytes.len() + rand::random::<usize>() % (64 << 10);
        bytes.resize(len, b'.');
        Bytes::from(bytes)
    }

    async fn run_h1(&self, stop: &AtomicBool) -> Tally {
        let mut tally = Tally::default();
        let mut conn: Option<Tls> = None;
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let s = match conn.as_mut() {
                Some(s) => s,
                None => conn.insert(self.connect(b"http/1.1").await),
            };
            i += 1;
            let body = self.sample(i);
            let mut req = format!(
                "POST /v1/submit HTTP/1.1\r\nHost: sandgnat\r\nX-API-Key: {}\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                self.key,
                body.len()
            )
            .into_bytes();
            req.extend_from_slice(&body);
            let answer = async {
                s.write_all(&req).await.map_err(|e| format!("write: {e}"))?;
                s.flush().await.map_err(|e| format!("write: {e}"))?;
                super::h1::read_answer_async(s)
                    .await
                    .map(|a| (a.status, a.close))
            };
            let answer = tokio::time::timeout(ANSWER_WITHIN, answer)
                .await
                .unwrap_or_else(|_| Err("no answer within 30 s".into()));
            match answer {
                Ok((status, close)) => {
                    if status == 202 {
                        tally.ok += 1;
                        self.accepted.fetch_add(1, Ordering::SeqCst);
                    } else {
                        tally.failures.push(format!("status {status}"));
                    }
                    if close {
                        conn = None;
                    }
                }
                Err(e) => {
                    tally.failures.push(e);
                    conn = None;
                }
            }
        }
        tally
    }

    async fn run_h2(&self, stop: &AtomicBool) -> Tally {
        let mut tally = Tally::default();
        let mut conn: Option<h2::client::SendRequest<Bytes>> = None;
        let mut i = 0u64;
        let mut again: Option<Bytes> = None;
        while !stop.load(Ordering::SeqCst) || again.is_some() {
            let sender = match conn.take() {
                Some(s) => s,
                None => {
                    let tls = self.connect(b"h2").await;
                    let (sender, connection) =
                        h2::client::handshake(tls).await.expect("h2 handshake");
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    sender
                }
            };
            // A connection that has had its GOAWAY takes no new stream:
            // nothing was sent on it, so this is no failure.
            let mut sender = match sender.ready().await {
                Ok(s) => s,
                Err(_) => continue,
            };
            let body = match again.take() {
                Some(b) => b,
                None => {
                    i += 1;
                    self.sample(i)
                }
            };
            let req = http::Request::post(format!("https://{}/v1/submit", self.addr))
                .header("x-api-key", &self.key)
                .header("content-type", "application/octet-stream")
                .header("content-length", body.len())
                .body(())
                .unwrap();
            let exchange = async {
                let (resp, mut upload) = sender.send_request(req, false)?;
                upload.send_data(body.clone(), true)?;
                let resp = resp.await?;
                let status = resp.status().as_u16();
                let mut answer = resp.into_body();
                while let Some(chunk) = answer.data().await {
                    let chunk = chunk?;
                    let _ = answer.flow_control().release_capacity(chunk.len());
                }
                Ok::<u16, h2::Error>(status)
            };
            match tokio::time::timeout(ANSWER_WITHIN, exchange).await {
                Ok(Ok(202)) => {
                    tally.ok += 1;
                    self.accepted.fetch_add(1, Ordering::SeqCst);
                    conn = Some(sender);
                }
                Ok(Ok(status)) => {
                    tally.failures.push(format!("status {status}"));
                    conn = Some(sender);
                }
                Ok(Err(e)) if never_processed(&e) => {
                    tally.refused += 1;
                    again = Some(body);
                }
                Ok(Err(e)) => tally.failures.push(format!("h2: {e}")),
                Err(_) => tally.failures.push("no answer within 30 s".into()),
            }
        }
        tally
    }
}

/// RFC 9113 §8.7: what the server guarantees it did not process.
fn never_processed(e: &h2::Error) -> bool {
    e.is_remote() && (e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM))
}
