//! The S3 backend: samples in one bucket of an S3-compatible store (AWS,
//! Garage, MinIO, Ceph's RGW), at `<prefix>/aa/bb/<sha256>`, shared by
//! every node. Built on the `object_store` crate (Apache Arrow's client:
//! SigV4, retries, multipart), with the credentials taken from the
//! environment only, so they never sit in the settings file or in what
//! `check-config` prints.
//!
//! Writes: a sample up to [`PART`] goes in one PUT from memory; a larger
//! one in a multipart upload read from its spool file one part at a time,
//! at most [`PARTS_IN_FLIGHT`] parts held at once, so a worker's memory
//! does not grow with the sample (two parts: 16 MiB, whatever its size). An upload that fails is aborted (the
//! parts sent are dropped by the server). Payloads are sent unsigned
//! (`UNSIGNED-PAYLOAD`): signing one means hashing it on the worker's
//! event loop, and the sample's own SHA-256 is its name already.
//!
//! Reads are checked: an object whose bytes do not hash to its name (the
//! bucket is shared, and writable by every node) fails its read before
//! the last byte goes out.
//!
//! Leftovers (`intake::store_leftovers`): the bucket is listed for the
//! samples' objects, and one that no kept sample names is moved aside to
//! `<prefix>/leftovers/<sha256>` (a server-side copy, then a delete) and
//! copied back if a sample turns out to name it after all.
//!
//! Time: one request may take [`REQUEST_TIMEOUT`], connecting
//! [`CONNECT_TIMEOUT`], and the client retries a failed request briefly
//! ([`retry`]): a store that is away for longer makes the operation fail
//! (intake answers 503), rather than hold a client for minutes. Reads are
//! streamed at the reader's pace, so they have no overall limit, only
//! [`IDLE_TIMEOUT`] between two chunks.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use super::{Object, Source, StoreError};
use crate::config::Storage;

/// Bytes per part of a multipart upload, and the largest sample sent in
/// one PUT (S3 wants parts of 5 MiB or more, but the last).
pub const PART: u64 = 8 << 20;
/// Parts of one upload in flight at once: the upload's memory.
pub const PARTS_IN_FLIGHT: usize = 2;
/// The longest one request (a PUT of a part, a HEAD) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a read may wait for the next chunk of a sample.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The object `/readyz` writes to show the bucket takes writes; not a
/// content address, so nothing that walks samples ever sees it.
const PROBE_NAME: &str = "readyz-probe";

/// The environment variables the credentials come from (the service's
/// environment file, `/etc/sandgnat/env`).
pub const ACCESS_KEY_VAR: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_KEY_VAR: &str = "AWS_SECRET_ACCESS_KEY";
pub const SESSION_TOKEN_VAR: &str = "AWS_SESSION_TOKEN";

/// A key pair for the bucket; its `Debug` shows no secret.
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// From `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, when set,
    /// `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Result<Self, StoreError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, StoreError> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        match (get(ACCESS_KEY_VAR), get(SECRET_KEY_VAR)) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
                access_key_id,
                secret_access_key,
                session_token: get(SESSION_TOKEN_VAR),
            }),
            _ => Err(StoreError::Config(format!(
                "storage.backend = \"s3\" needs {ACCESS_KEY_VAR} and {SECRET_KEY_VAR} in the \
                 service's environment (/etc/sandgnat/env), never in the settings file"
            ))),
        }
    }
}

/// One bucket, through two clients: one for requests that must end in
/// bounded time, one for reads that stream at a client's pace.
pub struct Bucket {
    control: Arc<AmazonS3>,
    reader: AmazonS3,
    bucket: String,
    prefix: String,
}

impl Bucket {
    pub fn new(storage: &Storage, credentials: &Credentials) -> Result<Self, StoreError> {
        Ok(Bucket {
            control: Arc::new(client(storage, credentials, Some(REQUEST_TIMEOUT))?),
            reader: client(storage, credentials, None)?,
            bucket: storage.bucket.clone(),
            prefix: storage.prefix.trim_matches('/').to_string(),
        })
    }

    fn key(&self, name: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(name)
        } else {
            Key::from(format!("{}/{name}", self.prefix))
        }
    }

    fn sample_key(&self, sha256: &str) -> Key {
        self.key(&super::address(sha256))
    }

    /// `s3://bucket/key`, as the sample's row records it.
    pub fn location(&self, sha256: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.sample_key(sha256))
    }

    /// The stored object's size, if it is there.
    pub async fn head(&self, sha256: &str) -> Result<u64, StoreError> {
        let meta = self
            .control
            .head(&self.sample_key(sha256))
            .await
            .map_err(classify)?;
        Ok(meta.size)
    }

    /// Uploads `source` (`size` bytes) and returns once the store has
    /// confirmed all of it.
    pub async fn put(&self, sha256: &str, source: &Source, size: u64) -> Result<(), StoreError> {
        let key = self.sample_key(sha256);
        let whole = match source {
            Source::Memory(bytes) => Some(bytes.clone()),
            Source::File(f) if size <= PART => {
                let path = f.path().to_path_buf();
                Some(Bytes::from(blocking(move || std::fs::read(path)).await?))
            }
            Source::File(_) => None,
        };
        let result = match (whole, source) {
            (Some(bytes), _) => self
                .control
                .put(&key, PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(classify),
            (None, Source::File(f)) => self.put_parts(&key, f.path(), size).await,
            (None, Source::Memory(_)) => unreachable!("memory is sent whole"),
        };
        // A missing bucket answers 404: that is the operator's to fix,
        // not a missing sample.
        result.map_err(|e| match e {
            StoreError::Missing => StoreError::Refused(format!("no bucket {:?}", self.bucket)),
            other => other,
        })
    }

    /// A multipart upload read from `path` part by part.
    async fn put_parts(
        &self,
        key: &Key,
        path: &std::path::Path,
        size: u64,
    ) -> Result<(), StoreError> {
        let mut upload = self.control.put_multipart(key).await.map_err(classify)?;
        let file = Arc::new(std::fs::File::open(path)?);
        let mut in_flight = tokio::task::JoinSet::new();
        let sent = async {
            let mut offset = 0u64;
            while offset < size {
                // A part is read only once one in flight is done, so no
                // more than `PARTS_IN_FLIGHT` are ever held.
                while in_flight.len() >= PARTS_IN_FLIGHT {
                    joined(in_flight.join_next().await)?;
                }
                let len = PART.min(size - offset);
                let f = file.clone();
                let part = blocking(move || read_at(&f, offset, len)).await?;
                in_flight.spawn(upload.put_part(PutPayload::from(Bytes::from(part))));
                offset += len;
            }
            while let Some(done) = in_flight.join_next().await {
                joined(Some(done))?;
            }
            upload.complete().await.map_err(classify)?;
            Ok::<(), StoreError>(())
        }
        .await;
        if sent.is_err() {
            in_flight.abort_all();
            if let Err(e) = upload.abort().await {
                tracing::warn!(error = %e, key = %key, "cannot abort a failed multipart upload; the bucket's lifecycle rules must drop its parts");
            }
        }
        sent
    }

    /// Opens the sample for a streamed read.
    pub async fn open(&self, sha256: &str) -> Result<Object, StoreError> {
        let got = tokio::time::timeout(REQUEST_TIMEOUT, self.reader.get(&self.sample_key(sha256)))
            .await
            .map_err(|_| StoreError::Unavailable("no answer in time".into()))?
            .map_err(classify)?;
        let size = got.meta.size;
        let modified = got.meta.last_modified;
        let chunks = got.into_stream();
        let body = futures_util::stream::unfold(Some((chunks, 0u64)), move |state| async move {
            let (mut chunks, seen) = state?;
            match tokio::time::timeout(IDLE_TIMEOUT, chunks.next()).await {
                Err(_) => Some((
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the sample store stopped sending",
                    )),
                    None,
                )),
                Ok(None) if seen == size => None,
                Ok(None) => Some((Err(io::ErrorKind::UnexpectedEof.into()), None)),
                Ok(Some(Err(e))) => Some((Err(io::Error::other(e)), None)),
                Ok(Some(Ok(c))) if seen + c.len() as u64 > size => Some((
                    Err(io::Error::other("the sample store sent more than the size")),
                    None,
                )),
                Ok(Some(Ok(c))) => {
                    let seen = seen + c.len() as u64;
                    Some((Ok(c), Some((chunks, seen))))
                }
            }
        });
        Ok(Object {
            size,
            modified,
            body: verified(body, sha256.to_string()).boxed(),
        })
    }

    pub async fn delete(&self, sha256: &str) -> Result<(), StoreError> {
        self.control
            .delete(&self.sample_key(sha256))
            .await
            .map_err(classify)
    }

    fn aside_key(&self, sha256: &str) -> Key {
        self.key(&format!("{ASIDE_DIR}/{sha256}"))
    }

    /// Every object below the prefix that is a sample's or one set
    /// aside, with when it was written; anything else there is left out.
    pub fn listing(&self) -> BoxStream<'static, Result<Listed, StoreError>> {
        let prefix = (!self.prefix.is_empty()).then(|| Key::from(self.prefix.as_str()));
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        self.control
            .list(prefix.as_ref())
            .filter_map(move |meta| {
                let listed = match meta {
                    Err(e) => Some(Err(classify(e))),
                    Ok(meta) => {
                        let key = meta.location.to_string();
                        key.strip_prefix(&strip).and_then(|rest| {
                            let what = kind(rest)?;
                            Some(Ok(Listed {
                                what,
                                modified: meta.last_modified,
                            }))
                        })
                    }
                };
                std::future::ready(listed)
            })
            .boxed()
    }

    /// Moves a sample's object aside: copied to its place among the
    /// leftovers, then deleted from its content address.
    pub async fn set_aside(&self, sha256: &str) -> Result<(), StoreError> {
        let (home, aside) = (self.sample_key(sha256), self.aside_key(sha256));
        self.control.copy(&home, &aside).await.map_err(classify)?;
        self.control.delete(&home).await.map_err(classify)
    }

    /// Copies an object set aside back to its content address.
    pub async fn restore(&self, sha256: &str) -> Result<(), StoreError> {
        let (home, aside) = (self.sample_key(sha256), self.aside_key(sha256));
        self.control.copy(&aside, &home).await.map_err(classify)
    }

    /// Deletes an object set aside.
    pub async fn drop_aside(&self, sha256: &str) -> Result<(), StoreError> {
        self.control
            .delete(&self.aside_key(sha256))
            .await
            .map_err(classify)
    }

    /// Writes the probe object: the store is reached, takes this node's
    /// credentials and writes to the bucket.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let key = self.key(PROBE_NAME);
        let put = self.control.put(&key, PutPayload::from_static(b""));
        match tokio::time::timeout(PROBE_TIMEOUT, put).await {
            Err(_) => Err(StoreError::Unavailable("no answer in time".into())),
            Ok(Err(e)) => Err(match classify(e) {
                StoreError::Missing => StoreError::Refused(format!("no bucket {:?}", self.bucket)),
                other => other,
            }),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// A read of the probe object (absent is fine): the store answers.
    pub async fn reachable(&self) -> Result<(), StoreError> {
        let key = self.key(PROBE_NAME);
        let head = self.control.head(&key);
        match tokio::time::timeout(PROBE_TIMEOUT, head).await {
            Err(_) => Err(StoreError::Unavailable("no answer in time".into())),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => match classify(e) {
                StoreError::Missing => Ok(()),
                other => Err(other),
            },
        }
    }
}

/// Where the sweep sets objects aside, below the prefix.
const ASIDE_DIR: &str = "leftovers";

/// An object of the bucket, as the sweep for leftovers sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// At a content address (`aa/bb/<sha256>`).
    Sample(String),
    /// Set aside (`leftovers/<sha256>`).
    Aside(String),
}

#[derive(Debug, Clone)]
pub struct Listed {
    pub what: Kind,
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// What a key below the prefix is, if the sweep has anything to do
/// with it.
fn kind(rest: &str) -> Option<Kind> {
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [a, b, sha]
            if super::is_sha256(sha) && sha.get(..2) == Some(*a) && sha.get(2..4) == Some(*b) =>
        {
            Some(Kind::Sample(sha.to_string()))
        }
        [dir, sha] if *dir == ASIDE_DIR && super::is_sha256(sha) => {
            Some(Kind::Aside(sha.to_string()))
        }
        _ => None,
    }
}

/// The object's bytes, checked against the name they are read under: the
/// last chunk is held back until the whole object's SHA-256 is known, and
/// a mismatch fails the stream instead, so a reader never gets all of an
/// object that another writer to the shared bucket changed.
fn verified(
    body: impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static,
    sha256: String,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> {
    use sha2::Digest;
    let state = (Box::pin(body), sha2::Sha256::new(), None::<Bytes>);
    futures_util::stream::unfold(Some(state), move |state| {
        let sha256 = sha256.clone();
        async move {
            let (mut body, mut hasher, mut held) = state?;
            loop {
                match body.next().await {
                    Some(Ok(chunk)) => {
                        hasher.update(&chunk);
                        if let Some(previous) = held.replace(chunk) {
                            return Some((Ok(previous), Some((body, hasher, held))));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), None)),
                    None if hex::encode(hasher.finalize()) != sha256 => {
                        tracing::error!(%sha256, "a stored object's bytes are not the sample it is named for; not served");
                        let e = io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the stored object is not the sample it is named for",
                        );
                        return Some((Err(e), None));
                    }
                    None => return held.map(|last| (Ok(last), None)),
                }
            }
        }
    })
}

fn client(
    storage: &Storage,
    credentials: &Credentials,
    timeout: Option<Duration>,
) -> Result<AmazonS3, StoreError> {
    let options = ClientOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_allow_http(storage.allow_http);
    let options = match timeout {
        Some(t) => options.with_timeout(t),
        None => options.with_timeout_disabled(),
    };
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&storage.bucket)
        .with_region(&storage.region)
        .with_access_key_id(&credentials.access_key_id)
        .with_secret_access_key(&credentials.secret_access_key)
        .with_virtual_hosted_style_request(!storage.path_style)
        .with_allow_http(storage.allow_http)
        .with_unsigned_payload(true)
        .with_retry(retry())
        .with_client_options(options);
    if let Some(token) = &credentials.session_token {
        builder = builder.with_token(token);
    }
    if let Some(endpoint) = &storage.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    builder
        .build()
        .map_err(|e| StoreError::Config(e.to_string()))
}

/// Retries within a few seconds: enough for a dropped connection or a
/// store restarting, short enough that a client waiting on a submission
/// gets its 503 while it still waits.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(5),
    }
}

/// What an `object_store` error means for the caller.
fn classify(e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::Missing,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => StoreError::Refused(e.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn joined(
    done: Option<Result<object_store::Result<()>, tokio::task::JoinError>>,
) -> Result<(), StoreError> {
    match done {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(classify(e)),
        Some(Err(e)) => Err(StoreError::Unavailable(format!(
            "a part's upload failed: {e}"
        ))),
    }
}

/// Runs file I/O on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))?
        .map_err(StoreError::from)
}

/// `len` bytes of `file` from `offset`.
fn read_at(file: &std::fs::File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_whole_from_the_environment_and_never_show() {
        let from = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Credentials::from_vars(move |name| {
                pairs
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
        };
        let c = from(&[(ACCESS_KEY_VAR, "GKabc"), (SECRET_KEY_VAR, "s3cr3t-value")]).unwrap();
        let shown = format!("{c:?}");
        assert!(
            shown.contains("GKabc") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        assert!(c.session_token.is_none());
        for partial in [
            &[(ACCESS_KEY_VAR, "GKabc")][..],
            &[(SECRET_KEY_VAR, "s3cr3t-value")][..],
            &[(ACCESS_KEY_VAR, "GKabc"), (SECRET_KEY_VAR, "")][..],
        ] {
            let e = from(partial).unwrap_err().to_string();
            assert!(
                e.contains(ACCESS_KEY_VAR) && e.contains("/etc/sandgnat/env"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_sweep_knows_sample_and_aside_keys_only() {
        let sha = format!("abcd{}", "0".repeat(60));
        assert_eq!(
            kind(&format!("ab/cd/{sha}")),
            Some(Kind::Sample(sha.clone()))
        );
        assert_eq!(
            kind(&format!("leftovers/{sha}")),
            Some(Kind::Aside(sha.clone()))
        );
        for other in [
            format!("ab/ce/{sha}"),
            format!("ac/cd/{sha}"),
            format!("x/ab/cd/{sha}"),
            format!("ab/cd/{}", sha.to_uppercase()),
            "readyz-probe".to_string(),
            format!("leftovers/{sha}/x"),
            format!("other/{sha}"),
        ] {
            assert_eq!(kind(&other), None, "{other}");
        }
    }

    #[test]
    fn keys_are_the_content_address_under_the_prefix() {
        let creds = Credentials::from_vars(|n: &str| Some(format!("x-{n}"))).unwrap();
        let mut st = Storage {
            backend: "s3".into(),
            bucket: "lab".into(),
            endpoint: Some("http://127.0.0.1:3900".into()),
            allow_http: true,
            prefix: "/node/samples/".into(),
            ..Storage::default()
        };
        let sha = format!("abcd{}", "e".repeat(60));
        let b = Bucket::new(&st, &creds).unwrap();
        assert_eq!(
            b.location(&sha),
            format!("s3://lab/node/samples/ab/cd/{sha}")
        );
        st.prefix.clear();
        let b = Bucket::new(&st, &creds).unwrap();
        assert_eq!(b.location(&sha), format!("s3://lab/ab/cd/{sha}"));
        assert_eq!(st.port(), Some(3900));
        st.endpoint = Some("https://s3.example".into());
        assert_eq!(st.port(), Some(443));
        st.endpoint = None;
        assert_eq!(st.port(), Some(443));
    }
}
