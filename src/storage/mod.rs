//! The sample store: where a sample's bytes live once accepted, under its
//! content address (`aa/bb/<sha256>`), on this node's disk (`local`, the
//! quarantine below `paths.state_dir`) or in an S3-compatible bucket
//! (`s3`, shared by every node). Everything that writes, finds, reads or
//! deletes a sample's bytes goes through [`SampleStore`]: intake puts,
//! the download route and the static-analysis runner read, `/readyz`
//! probes, retention deletes.
//!
//! A put returns only once the bytes are durable (local: synced file and
//! directory; S3: the server's answer to the last request of the upload),
//! so the database is told about a sample only after its bytes are safe.
//! Every operation is counted in the scoreboard (`sandgnat_storage_*`).
//! Errors are [`StoreError`]: callers choose the answer from its kind and
//! never show a driver's words to a client.
//!
//! Below intake, the runner and the routes: this module imports only the
//! settings and the scoreboard.

pub mod local;
pub mod s3;
mod spool_file;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use crate::config::Settings;
use crate::scoreboard::{Scoreboard, STORE_DIRECTIONS, STORE_OPERATIONS, STORE_OUTCOMES};
pub use spool_file::SpoolFile;

/// Whether `s` names a sample as the store does: a SHA-256 in 64
/// lowercase hex digits. Anything that builds a location from a hash it
/// did not compute itself checks it with this first.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The content address below the store's root: `aa/bb/<sha256>`.
/// `sha256` must have passed [`is_sha256`].
pub fn address(sha256: &str) -> String {
    format!("{}/{}/{sha256}", &sha256[0..2], &sha256[2..4])
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No sample under that address.
    #[error("the sample is not in the store")]
    Missing,
    /// Local: the file system is full (or over quota).
    #[error("no space left in the quarantine")]
    Full,
    /// Local: any other file-system failure.
    #[error("quarantine: {0}")]
    Io(io::Error),
    /// The store did not answer, or answered with a failure that a later
    /// try may not meet (time-outs, 5xx, a connection refused or cut).
    #[error("the sample store is unavailable: {0}")]
    Unavailable(String),
    /// The store refused this node's credentials or request (401, 403, a
    /// missing bucket): an operator must act.
    #[error("the sample store refused the request: {0}")]
    Refused(String),
    /// The settings or the environment do not describe a usable store.
    #[error("the sample store cannot be set up: {0}")]
    Config(String),
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::Full,
            _ if e.kind() == io::ErrorKind::NotFound => StoreError::Missing,
            _ => StoreError::Io(e),
        }
    }
}

/// A received sample's bytes, as a put takes them.
#[derive(Debug)]
pub enum Source {
    /// Held in memory.
    Memory(Bytes),
    /// In a spool file. The local store moves it into the quarantine (the
    /// guard then lets go of it); the S3 store reads it and leaves it.
    File(SpoolFile),
}

impl Source {
    pub fn len(&self) -> io::Result<u64> {
        match self {
            Source::Memory(b) => Ok(b.len() as u64),
            Source::File(f) => Ok(std::fs::metadata(f.path())?.len()),
        }
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        self.len().map(|n| n == 0)
    }
}

/// Where a put left a sample's bytes, and whether it wrote them.
#[derive(Debug, Clone)]
pub struct Stored {
    /// As the sample's row records it (a path, or `s3://bucket/key`).
    pub location: String,
    /// False when the same bytes were found stored: the submission then
    /// relies on a copy that a purge may be deleting (`intake::record`
    /// refuses it if the sample was purged meanwhile).
    pub wrote: bool,
}

/// A stored sample opened for reading: its size, when it was stored and
/// its bytes as a stream of chunks. The stream yields exactly `size`
/// bytes or ends in an error, never in a short body that looks whole.
pub struct Object {
    pub size: u64,
    pub modified: DateTime<Utc>,
    pub body: BoxStream<'static, io::Result<Bytes>>,
}

/// The operations counted, by index into `STORE_OPERATIONS`.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Put = 0,
    Head = 1,
    Get = 2,
    Delete = 3,
    Probe = 4,
}

/// How an operation ended, by index into `STORE_OUTCOMES`.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok = 0,
    Missing = 1,
    Error = 2,
}

/// Where this process counts its store operations: the scoreboard's
/// header, shared by every process of the node (none in a command that
/// has no scoreboard).
#[derive(Clone, Default)]
pub struct Meter(Option<Arc<Scoreboard>>);

impl Meter {
    pub fn new(board: Arc<Scoreboard>) -> Self {
        Meter(Some(board))
    }

    fn count<T>(&self, op: Op, result: &Result<T, StoreError>) {
        let outcome = match result {
            Ok(_) => Outcome::Ok,
            Err(StoreError::Missing) => Outcome::Missing,
            Err(_) => Outcome::Error,
        };
        if let Some(b) = &self.0 {
            b.header().store_operations[op as usize][outcome as usize].fetch_add(1, Relaxed);
        }
    }

    fn bytes(&self, direction: Direction, n: u64) {
        if let Some(b) = &self.0 {
            b.header().store_bytes[direction as usize].fetch_add(n, Relaxed);
        }
    }
}

/// Bytes counted, by index into `STORE_DIRECTIONS`.
#[derive(Debug, Clone, Copy)]
enum Direction {
    Written = 0,
    Read = 1,
}

const _: () = assert!(STORE_OPERATIONS.len() == 5 && STORE_OUTCOMES.len() == 3);
const _: () = assert!(STORE_DIRECTIONS.len() == 2);

/// The backends, as `storage.backend` names them.
pub enum Backend {
    Local(local::Quarantine),
    S3(s3::Bucket),
}

/// The node's sample store; cheap to clone.
#[derive(Clone)]
pub struct SampleStore {
    backend: Arc<Backend>,
    meter: Meter,
}

impl SampleStore {
    /// The local quarantine at `root`, with its spool at `spool`: what a
    /// node's sweep for leftovers looks after, whatever its backend.
    pub fn local_at(root: PathBuf, spool: PathBuf, meter: Meter) -> Self {
        SampleStore {
            backend: Arc::new(Backend::Local(local::Quarantine::at(root, spool))),
            meter,
        }
    }

    /// The store `settings` describe, with S3 credentials from the
    /// environment. Makes no request: a store that is down now is found
    /// out by the first operation (and `/readyz`).
    pub fn from_settings(settings: &Settings, meter: Meter) -> Result<Self, StoreError> {
        let backend = match settings.storage.backend.as_str() {
            "s3" => Backend::S3(s3::Bucket::new(
                &settings.storage,
                &s3::Credentials::from_env()?,
            )?),
            _ => Backend::Local(local::Quarantine::new(settings)),
        };
        Ok(SampleStore {
            backend: Arc::new(backend),
            meter,
        })
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Whether the backend is the local quarantine: intake then writes
    /// it from the blocking pool, in the same hop as the scan
    /// ([`Self::local_put`]).
    pub fn is_local(&self) -> bool {
        matches!(&*self.backend, Backend::Local(_))
    }

    /// The quarantine, when it is the backend: readers whose parsers want
    /// a file open it in place.
    pub fn local(&self) -> Option<&local::Quarantine> {
        match &*self.backend {
            Backend::Local(q) => Some(q),
            Backend::S3(_) => None,
        }
    }

    /// Blocking, local backend only (`None` otherwise): whether the
    /// sample is in the quarantine.
    pub fn local_contains(&self, sha256: &str) -> Option<bool> {
        let Backend::Local(q) = &*self.backend else {
            return None;
        };
        let result = q.head(sha256);
        self.meter.count(Op::Head, &result);
        Some(result.is_ok())
    }

    /// Blocking, local backend only (`None` otherwise): puts the sample
    /// in the quarantine (a spool file is moved there) unless the same
    /// bytes are there already; returns the stored path.
    pub fn local_put(&self, sha256: &str, source: &Source) -> Option<Result<Stored, StoreError>> {
        let Backend::Local(q) = &*self.backend else {
            return None;
        };
        let result = q.store(sha256, source).map_err(StoreError::from);
        self.meter.count(Op::Put, &result);
        if matches!(&result, Ok(s) if s.wrote) {
            self.meter
                .bytes(Direction::Written, source.len().unwrap_or(0));
        }
        Some(result.map(|s| Stored {
            location: s.path.display().to_string(),
            wrote: s.wrote,
        }))
    }

    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// `local` or `s3`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match &*self.backend {
            Backend::Local(_) => "local",
            Backend::S3(_) => "s3",
        }
    }

    /// Where a sample's bytes are, as the sample's row records it (a path,
    /// or `s3://bucket/key`).
    pub fn location(&self, sha256: &str) -> String {
        match &*self.backend {
            Backend::Local(q) => q.path_for(sha256).display().to_string(),
            Backend::S3(b) => b.location(sha256),
        }
    }

    /// Whether the sample's bytes are stored already.
    pub async fn contains(&self, sha256: &str) -> Result<bool, StoreError> {
        if let Some(known) = self.local_contains(sha256) {
            return Ok(known);
        }
        let Backend::S3(b) = &*self.backend else {
            unreachable!("local_contains answers for the local backend");
        };
        let result = b.head(sha256).await.map(|_| ());
        self.meter.count(Op::Head, &result);
        match result {
            Ok(()) => Ok(true),
            Err(StoreError::Missing) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stores `source` under `sha256` (which the caller computed from the
    /// very bytes), durably, unless the same bytes are stored already.
    /// Returns the location. The S3 backend reads a spool file and leaves
    /// it; the local one moves it, on the blocking pool.
    pub async fn put(&self, sha256: &str, source: Arc<Source>) -> Result<Stored, StoreError> {
        let Backend::S3(b) = &*self.backend else {
            let store = self.clone();
            let sha = sha256.to_string();
            return tokio::task::spawn_blocking(move || store.local_put(&sha, &source))
                .await
                .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))?
                .unwrap_or_else(|| Err(StoreError::Config("not a local store".into())));
        };
        let size = source.len().map_err(StoreError::from)?;
        let result = b.put(sha256, &source, size).await;
        self.meter.count(Op::Put, &result);
        if result.is_ok() {
            self.meter.bytes(Direction::Written, size);
        }
        result.map(|()| Stored {
            location: b.location(sha256),
            wrote: true,
        })
    }

    /// Opens a stored sample for reading, streamed.
    pub async fn open(&self, sha256: &str) -> Result<Object, StoreError> {
        let result = match &*self.backend {
            Backend::Local(q) => q.open(sha256).await,
            Backend::S3(b) => b.open(sha256).await,
        };
        self.meter.count(Op::Get, &result);
        result.map(|o| self.counted(o))
    }

    /// Removes a sample's bytes; whether there were any (one already
    /// gone is not an error). The one caller is `intake::purged`, which
    /// holds the sample's row, marked purged, meanwhile.
    pub async fn delete(&self, sha256: &str) -> Result<bool, StoreError> {
        if !is_sha256(sha256) {
            return Err(StoreError::Config(format!("{sha256:?} is not a sha256")));
        }
        let result = match &*self.backend {
            Backend::Local(q) => {
                let (q, sha) = (q.clone(), sha256.to_string());
                tokio::task::spawn_blocking(move || q.delete(&sha))
                    .await
                    .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))
                    .and_then(|r| r)
            }
            Backend::S3(b) => match b.head(sha256).await {
                Ok(_) => b.delete(sha256).await.map(|()| true),
                Err(StoreError::Missing) => Ok(false),
                Err(e) => Err(e),
            },
        };
        self.meter.count(Op::Delete, &result);
        result
    }

    /// The bucket, when it is the backend: the sweep for its leftovers
    /// (`intake::store_leftovers`) lists it and moves objects aside.
    pub fn bucket(&self) -> Option<&s3::Bucket> {
        match &*self.backend {
            Backend::S3(b) => Some(b),
            Backend::Local(_) => None,
        }
    }

    /// Counts a deletion done outside [`Self::delete`] (an object set
    /// aside, or dropped, by the sweep for leftovers).
    pub fn count_delete<T>(&self, result: &Result<T, StoreError>) {
        self.meter.count(Op::Delete, result);
    }

    /// Whether a submission could be stored now: the quarantine is
    /// writable, or the bucket takes a write with this node's
    /// credentials. Bounded in time.
    pub async fn check_ready(&self) -> Result<(), StoreError> {
        let result = match &*self.backend {
            Backend::Local(q) => q.probe(),
            Backend::S3(b) => b.probe().await,
        };
        self.meter.count(Op::Probe, &result);
        result
    }

    /// Whether the store answers at all (a read, no write): what intake
    /// asks before it reads a large body it might not be able to keep.
    pub async fn reachable(&self) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Local(_) => Ok(()),
            Backend::S3(b) => {
                let result = b.reachable().await;
                self.meter.count(Op::Probe, &result);
                result
            }
        }
    }

    /// Copies a stored sample into a new file in `dir` (owner-only),
    /// streamed; the file is removed when the guard drops. For readers
    /// whose parsers need a file, when the store is not a local one.
    pub async fn copy_to_file(
        &self,
        sha256: &str,
        dir: &std::path::Path,
    ) -> Result<SpoolFile, StoreError> {
        let object = self.open(sha256).await?;
        let path = dir.join(format!("fetch-{:032x}", rand::random::<u128>()));
        spool_file::write_stream(path, object.body).await
    }

    fn counted(&self, object: Object) -> Object {
        let meter = self.meter.clone();
        Object {
            body: object
                .body
                .inspect(move |chunk| {
                    if let Ok(c) = chunk {
                        meter.bytes(Direction::Read, c.len() as u64);
                    }
                })
                .boxed(),
            ..object
        }
    }
}

/// Where received samples wait for the store: below the state directory,
/// on the quarantine's file system, so a spooled sample is renamed into
/// the local quarantine.
pub fn spool_dir(settings: &Settings) -> PathBuf {
    settings.paths.state_dir.join("spool")
}

/// Where job runners copy a remote store's samples for their parsers: a
/// directory of its own beside the spool, so a runner, confined to it,
/// can touch no upload in progress.
pub fn fetch_dir(settings: &Settings) -> PathBuf {
    settings.paths.state_dir.join(FETCH_DIR)
}

/// The name of [`fetch_dir`] in the state directory.
pub const FETCH_DIR: &str = "fetch";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_two_levels_of_the_hash() {
        let sha = format!("abcd{}", "0".repeat(60));
        assert!(is_sha256(&sha));
        assert_eq!(address(&sha), format!("ab/cd/{sha}"));
        assert!(!is_sha256(&sha.to_uppercase()));
        assert!(!is_sha256(&sha[1..]));
        assert!(!is_sha256(&format!("../{}", &sha[3..])));
    }
}
