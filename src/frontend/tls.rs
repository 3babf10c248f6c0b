//! The front end's certificate: where it lives, making a self-signed pair
//! when the operator configured none, and turning a PEM pair into a rustls
//! server configuration (TLS 1.2 and 1.3 only, ALPN h2 then http/1.1).
//!
//! Loading is a plain function with no threads and no runtime so that the
//! master can call it too: on HUP it validates the new pair before it
//! replaces a front end, and a bad pair leaves the old front end serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora_rustls::{version, CertificateDer, PrivateKeyDer, ServerConfig};
use sha2::{Digest, Sha256};

use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no {what} in PEM form")]
    Empty { what: &'static str, path: PathBuf },
    #[error("certificate {cert} and key {key} do not form a usable pair: {why}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        why: String,
    },
    #[error("cannot make a self-signed certificate in {dir}: {why}")]
    Generate { dir: PathBuf, why: String },
}

/// The certificate and key the front end serves: the configured pair, or
/// the generated one under `paths.state_dir/certs/`.
pub fn pair_paths(settings: &Settings) -> (PathBuf, PathBuf) {
    match (&settings.proxy.tls_cert, &settings.proxy.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let dir = settings.paths.state_dir.join("certs");
            (dir.join("self-signed.pem"), dir.join("self-signed.key"))
        }
    }
}

/// Makes the self-signed pair if none is configured and none exists yet,
/// and warns with its fingerprint so an operator can pin it. Called by
/// the master before it spawns a front end.
pub fn ensure_pair(settings: &Settings) -> Result<(), TlsError> {
    if settings.proxy.tls_cert.is_some() || settings.proxy.bind.is_empty() {
        return Ok(());
    }
    let (cert_path, key_path) = pair_paths(settings);
    if cert_path.exists() && key_path.exists() {
        return Ok(());
    }
    let dir = cert_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let fail = |why: String| TlsError::Generate {
        dir: dir.clone(),
        why,
    };
    let host = crate::config::host_name();
    let names = vec![host, "localhost".to_string()];
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| fail(e.to_string()))?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress(
        "127.0.0.1".parse().expect("literal"),
    ));
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("::1".parse().expect("literal")));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sandgnat self-signed");
    let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
    write_private(&key_path, key.serialize_pem().as_bytes()).map_err(|e| fail(e.to_string()))?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| fail(e.to_string()))?;
    tracing::warn!(
        cert = %cert_path.display(),
        sha256 = %fingerprint(cert.der()),
        "no proxy.tls_cert configured: made a self-signed certificate; clients must pin this fingerprint or an operator should configure a real certificate"
    );
    Ok(())
}

/// The key is written readable by its owner only; the service user reads
/// it before the front end drops privileges.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// SHA-256 of a DER certificate as colon-separated hex, as browsers show it.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads and checks the pair; the result is what the front end serves.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    pingora_rustls::install_default_crypto_provider();
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read("certificate", cert)?;
    let key_pem = read("private key", key)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::Empty {
            what: "certificate",
            path: cert.to_path_buf(),
        });
    }
    let private: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::Empty {
            what: "private key",
            path: key.to_path_buf(),
        })?;
    let pair_err = |why: String| TlsError::Pair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        why,
    };
    // with_single_cert also checks that the key matches the certificate,
    // which is what catches a half-swapped pair on HUP.
    let mut config =
        ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| pair_err(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The fingerprint of the first certificate in a PEM file, for logs.
pub fn file_fingerprint(cert: &Path) -> Option<String> {
    let pem = std::fs::read(cert).ok()?;
    let der = rustls_pemfile::certs(&mut pem.as_slice()).next()?.ok()?;
    Some(fingerprint(&der))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_in(dir: &Path) -> Settings {
        let mut s = Settings::default();
        s.paths.state_dir = dir.to_path_buf();
        s
    }

    #[test]
    fn generated_pair_loads_and_is_kept() {
        let dir = std::env::temp_dir().join(format!("sandgnat-tls-{}", std::process::id()));
        let s = settings_in(&dir);
        ensure_pair(&s).unwrap();
        let (c, k) = pair_paths(&s);
        let first = file_fingerprint(&c).unwrap();
        load(&c, &k).unwrap();
        // A second start reuses the pair rather than changing the fingerprint.
        ensure_pair(&s).unwrap();
        assert_eq!(file_fingerprint(&c).unwrap(), first);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn mismatched_pair_is_refused() {
        let a = std::env::temp_dir().join(format!("sandgnat-tls-a-{}", std::process::id()));
        let b = std::env::temp_dir().join(format!("sandgnat-tls-b-{}", std::process::id()));
        ensure_pair(&settings_in(&a)).unwrap();
        ensure_pair(&settings_in(&b)).unwrap();
        let (ca, _) = pair_paths(&settings_in(&a));
        let (_, kb) = pair_paths(&settings_in(&b));
        let err = load(&ca, &kb).unwrap_err().to_string();
        assert!(err.contains("do not form a usable pair"), "{err}");
        let _ = std::fs::remove_dir_all(a);
        let _ = std::fs::remove_dir_all(b);
    }
}
