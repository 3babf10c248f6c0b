//! The client's side of one HTTP/1.1 connection to an appliance: the
//! address and trust settings (`--url`, `--cacert`, `--insecure`), a
//! keep-alive connection over TLS (rustls through `pingora-rustls`, the
//! crates the front end already uses) and, for every request, whether it
//! certainly never reached the server. That last fact is the only one that
//! makes a retry of a submission safe, so every error here says it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use pingora_rustls::{
    CertificateDer, ClientConfig, DigitallySignedStruct, HandshakeSignatureValid, RootCertStore,
    ServerCertVerified, ServerCertVerifier, ServerName, SignatureScheme, TlsConnector, UnixTime,
};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A request body: empty, or a file streamed in chunks.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection idle longer than this is not reused for a request: the
/// server may be closing it (its keep-alive is `server.keepalive`) just as
/// the request goes out, and a request lost that way cannot be told apart
/// from one that was processed.
const REUSE_IDLE: Duration = Duration::from_secs(1);
/// The largest answer read: every API answer is a small JSON document.
const MAX_ANSWER: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--url {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("--cacert {path}: {why}")]
    CaCert { path: String, why: String },
    #[error("no system CA certificates ({0}); pass the appliance's certificate with --cacert")]
    Roots(String),
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Nothing was sent: no connection, or one that closed before the
    /// request was written. Trying again is safe.
    #[error("cannot connect to {addr}: {why}")]
    NotSent { addr: String, why: String },
    /// The server's certificate was refused, or TLS failed: trying again
    /// will not help.
    #[error("TLS with {addr} failed: {why}")]
    Tls { addr: String, why: String },
    /// The request went out and the connection ended before the whole
    /// answer came back: the server may have acted on it.
    #[error("the connection to {addr} broke after the request was sent: {why}")]
    Broken { addr: String, why: String },
}

impl SendError {
    pub fn not_sent(&self) -> bool {
        matches!(self, SendError::NotSent { .. })
    }

    /// Whether the same request may get an answer on another try: no
    /// connection, or one that ended before the answer. A TLS refusal
    /// would only be met again.
    pub fn may_pass_later(&self) -> bool {
        !matches!(self, SendError::Tls { .. })
    }
}

/// Where the appliance is and how its certificate is checked.
pub struct Endpoint {
    host: String,
    port: u16,
    /// `Host:` header value, as given in the URL.
    authority: String,
    /// Path prefix under which `/v1/...` lives (empty for the root).
    base: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Endpoint {
    pub fn new(url: &str, cacert: Option<&Path>, insecure: bool) -> Result<Self, SetupError> {
        let bad = |why: &str| SetupError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("must start with https:// (or http://)")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information in the URL is not used; pass the key in SANDGNAT_API_KEY or --key-file"));
        }
        if uri.query().is_some() {
            return Err(bad("a query string has no place in the base URL"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let base = uri.path().trim_end_matches('/').to_string();
        let tls = if https {
            let config = tls_config(cacert, insecure)?;
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| bad(&format!("not a host name for TLS: {e}")))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Endpoint {
            host: host.to_string(),
            port,
            authority: authority.as_str().to_string(),
            base,
            tls,
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

fn tls_config(cacert: Option<&Path>, insecure: bool) -> Result<ClientConfig, SetupError> {
    pingora_rustls::install_default_crypto_provider();
    let builder = ClientConfig::builder();
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(roots(cacert)?)
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `--cacert` alone when given (as curl does: trusting the appliance's own
/// certificate should not also trust every public CA), else the system's.
fn roots(cacert: Option<&Path>) -> Result<RootCertStore, SetupError> {
    let mut store = RootCertStore::empty();
    match cacert {
        Some(path) => {
            let bad = |why: String| SetupError::CaCert {
                path: path.display().to_string(),
                why,
            };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| bad(e.to_string()))?;
                store.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            if store.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
        }
        None => {
            let certs = pingora_rustls::load_native_certs()
                .map_err(|e| SetupError::Roots(e.to_string()))?;
            let (added, _ignored) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(SetupError::Roots("none found".into()));
            }
        }
    }
    Ok(store)
}

/// `--insecure`: any certificate is accepted. Checking the handshake's
/// signature against a certificate nobody vouches for would add nothing.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, pingora_rustls::RusTlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, pingora_rustls::RusTlsError> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, pingora_rustls::RusTlsError> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        pingora_rustls::CryptoProvider::get_default()
            .map(|p| p.signature_verification_algorithms.supported_schemes())
            .unwrap_or_default()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection at a time to the appliance, opened when needed and kept
/// alive between requests. A job owns one; requests on it go in turn.
pub struct Client {
    endpoint: Arc<Endpoint>,
    key: HeaderValue,
    conn: Option<(SendRequest<Body>, Instant)>,
}

impl Client {
    pub fn new(endpoint: Arc<Endpoint>, key: HeaderValue) -> Self {
        Client {
            endpoint,
            key,
            conn: None,
        }
    }

    /// A request to `path_and_query` (below the URL's path) with the key.
    pub fn request(&self, method: Method, path_and_query: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.endpoint.base))
            .header(HOST, &self.endpoint.authority)
            .header(USER_AGENT, concat!("sandgnat/", env!("CARGO_PKG_VERSION")))
            .header("x-api-key", self.key.clone())
    }

    /// A GET with no body, read whole.
    pub async fn get(&mut self, path_and_query: &str) -> Result<Answer, SendError> {
        let req = self
            .request(Method::GET, path_and_query)
            .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
            .map_err(|e| self.broken(e))?;
        let resp = self.send(req).await?;
        self.read(resp).await
    }

    /// Sends `req`, on the kept connection if it is fresh enough, else on
    /// a new one. A request that the kept connection refused before
    /// writing it goes once more on a new connection.
    pub async fn send(&mut self, mut req: Request<Body>) -> Result<Response<Incoming>, SendError> {
        loop {
            let (mut sender, fresh) = match self.conn.take() {
                Some((s, used)) if !s.is_closed() && used.elapsed() < REUSE_IDLE => (s, false),
                _ => (self.connect().await?, true),
            };
            if let Err(e) = sender.ready().await {
                if fresh {
                    return Err(self.not_sent(e));
                }
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.conn = Some((sender, Instant::now()));
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => req = unsent,
                    Some(_) => return Err(self.not_sent(e.into_error())),
                    None => return Err(self.broken(e.into_error())),
                },
            }
        }
    }

    /// Reads an answer whole (bounded).
    pub async fn read(&mut self, resp: Response<Incoming>) -> Result<Answer, SendError> {
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| {
                self.conn = None;
                self.broken(e)
            })?
            .to_bytes();
        if let Some((_, used)) = self.conn.as_mut() {
            *used = Instant::now();
        }
        let retry_after = parts
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let json = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        Ok(Answer {
            status: parts.status,
            retry_after,
            body,
            json,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let ep = &self.endpoint;
        let addr = ep.addr();
        let not_sent = |why: String| SendError::NotSent {
            addr: addr.clone(),
            why,
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((ep.host.as_str(), ep.port)),
        )
        .await
        .map_err(|_| not_sent(format!("no connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| not_sent(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &ep.tls {
            Some((connector, name)) => {
                // A handshake that the server's end cut or left unanswered
                // (a reload, a restart) sent no request: tried again. One
                // that TLS itself refused (the certificate, the protocol:
                // rustls's errors come as invalid data) would fail again.
                let tls =
                    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| {
                            not_sent(format!("no TLS handshake within {CONNECT_TIMEOUT:?}"))
                        })?
                        .map_err(|e| match e.kind() {
                            std::io::ErrorKind::InvalidData => SendError::Tls {
                                addr: addr.clone(),
                                why: e.to_string(),
                            },
                            _ => not_sent(format!("TLS handshake: {e}")),
                        })?;
                Box::new(tls)
            }
            None => Box::new(tcp),
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| not_sent(e.to_string()))?;
        // The connection's I/O runs beside the requests; it ends when the
        // sender is dropped or the server closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn not_sent(&self, e: impl std::fmt::Display) -> SendError {
        SendError::NotSent {
            addr: self.endpoint.addr(),
            why: e.to_string(),
        }
    }

    fn broken(&self, e: impl std::fmt::Display) -> SendError {
        SendError::Broken {
            addr: self.endpoint.addr(),
            why: e.to_string(),
        }
    }
}

/// An answer read whole.
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
    json: bool,
}

impl Answer {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        if !self.json {
            return None;
        }
        serde_json::from_slice(&self.body).ok()
    }

    /// The server's `error` code and `message`, or what can be said
    /// without them (a proxy's HTML page is not repeated).
    pub fn error(&self) -> (String, String) {
        let doc = self.json();
        let field = |name: &str| {
            doc.as_ref()
                .and_then(|d| d.get(name))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let code = field("error").unwrap_or_else(|| "http_error".into());
        let message = field("message").unwrap_or_else(|| {
            format!(
                "{} {}",
                self.status.as_u16(),
                self.status.canonical_reason().unwrap_or("")
            )
        });
        (code, message)
    }
}

/// A secret for the `X-API-Key` header, kept out of debug output.
pub fn key_header(key: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(key).ok()?;
    v.set_sensitive(true);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::new("http://127.0.0.1:8080/base/", None, false).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.base.as_str()),
            ("127.0.0.1", 8080, "/base")
        );
        assert!(e.is_loopback() && !e.is_tls());
        let e = Endpoint::new("http://[::1]", None, false).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 80));
        assert!(Endpoint::new("ftp://x", None, false).is_err());
        assert!(Endpoint::new("https://user:pw@x", None, true).is_err());
        assert!(Endpoint::new("127.0.0.1:8443", None, false).is_err());
    }
}
