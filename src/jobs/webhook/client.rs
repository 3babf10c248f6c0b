//! One HTTP/1.1 POST to an address that was already checked: TCP to that
//! address (never the name again), TLS with rustls (the version pingora
//! brings, the system's root certificates, the URL's host as the server
//! name) for https, hyper's client connection for the exchange. Redirects
//! are not followed: a 3xx is an answer like any other non-2xx. The
//! caller bounds the whole exchange with `queue.webhook_timeout`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use pingora_rustls::{ClientConfig, RootCertStore, ServerName, TlsConnector};
use tokio::net::TcpStream;

use super::destination::{Scheme, Target};

/// What the receiver said: its status and the start of its body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// How much of an answer's body is kept for the job's error history.
const BODY_KEPT: usize = 512;
/// How much of it is read at all, and for how long: a receiver that
/// answered 2xx and then dawdles over its body still gets its 2xx counted.
const BODY_READ: usize = 64 << 10;
const BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The TLS client settings, built once per process: the system's roots
/// (read from the usual files, which the service account can read).
fn tls_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            pingora_rustls::install_default_crypto_provider();
            let mut roots = RootCertStore::empty();
            let certs = pingora_rustls::load_native_certs()
                .map_err(|e| format!("cannot load the system's root certificates: {e}"))?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(
                    "no root certificates found on this system (install ca-certificates)".into(),
                );
            }
            Ok(Arc::new(
                ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            ))
        })
        .clone()
}

/// Connects to the first address that answers.
async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last = String::from("no address to connect to");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

pub async fn post(
    target: &Target,
    addrs: &[SocketAddr],
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<Answer, String> {
    let mut req = Request::post(target.path_and_query.as_str())
        .header(header::HOST, &target.authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("sandgnat/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::CONNECTION, "close");
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let tcp = connect(addrs).await?;
    match target.scheme {
        Scheme::Http => exchange(TokioIo::new(tcp), req).await,
        Scheme::Https => {
            let config = tls_config()?;
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| format!("{:?} is not a TLS server name: {e}", target.host))?;
            let tls = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {} failed: {e}", target.host))?;
            exchange(TokioIo::new(tls), req).await
        }
    }
}

async fn exchange<I>(io: I, req: Request<Full<Bytes>>) -> Result<Answer, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    // The connection is driven beside the request and dropped with it.
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status().as_u16();
        // A short look at the body, for the error history; a body larger
        // than the bound or one that breaks off is not the receiver's
        // answer to judge by, the status is.
        let bytes = tokio::time::timeout(
            BODY_WAIT,
            Limited::new(resp.into_body(), BODY_READ).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|c| c.to_bytes())
        .unwrap_or_default();
        let mut body = String::from_utf8_lossy(&bytes[..bytes.len().min(BODY_KEPT)]).into_owned();
        body.retain(|c| !c.is_control() || c == ' ');
        Ok(Answer { status, body })
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_rustls::{CertificateDer, PrivateKeyDer, ServerConfig, TlsAcceptor};

    /// https goes through rustls and checks the receiver's certificate
    /// against the system's roots: a self-signed one is refused.
    #[tokio::test]
    async fn https_refuses_an_untrusted_certificate() {
        pingora_rustls::install_default_crypto_provider();
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert: CertificateDer<'static> = pair.cert.der().clone();
        let key = PrivateKeyDer::try_from(pair.key_pair.serialize_der()).unwrap();
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        let target = Target::parse(&format!("https://localhost:{}/hook", addr.port())).unwrap();
        let err = post(&target, &[addr], &[], Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        // (A machine without ca-certificates fails earlier, and says so.)
        assert!(
            err.contains("TLS with localhost failed") || err.contains("root certificates"),
            "{err}"
        );
        if err.contains("TLS with") {
            assert!(err.to_lowercase().contains("certificate"), "{err}");
        }
    }
}
