//! Receiving a sample's bytes: streamed into a spool file on the quarantine
//! filesystem while SHA-256, SHA-1 and MD5 are computed in the same pass,
//! on a blocking thread so the event loop never hashes. Memory stays at a
//! few chunks whatever the sample's size. A spool file that is not handed
//! on is removed, whatever ends the upload (error, limit, disconnect).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// Chunks in flight between the event loop and the writer thread.
const QUEUE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the sample is larger than intake.max_sample_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("no space left in the spool")]
    NoSpace,
    #[error("cannot write the spool file: {0}")]
    Io(io::Error),
}

impl From<io::Error> for UploadError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            UploadError::NoSpace
        } else {
            UploadError::Io(e)
        }
    }
}

/// A file in the spool, removed when dropped unless kept.
#[derive(Debug)]
pub struct SpoolFile {
    path: PathBuf,
    keep: bool,
}

impl SpoolFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file was moved elsewhere (or is to stay): do not remove it.
    pub fn disarm(mut self) -> PathBuf {
        self.keep = true;
        std::mem::take(&mut self.path)
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A fully received sample.
#[derive(Debug)]
pub struct Received {
    pub file: SpoolFile,
    pub size: u64,
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
}

/// An upload in progress.
pub struct Upload {
    tx: Option<mpsc::Sender<Bytes>>,
    writer: tokio::task::JoinHandle<Result<Received, UploadError>>,
    limit: u64,
    seen: u64,
}

impl Upload {
    /// Opens a new spool file (owner-only) and starts its writer thread.
    pub fn start(spool_dir: &Path, limit: u64) -> Result<Self, UploadError> {
        let path = spool_dir.join(format!("upload-{:032x}", rand::random::<u128>()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let guard = SpoolFile { path, keep: false };
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = tokio::task::spawn_blocking(move || write_all(file, guard, rx));
        Ok(Upload {
            tx: Some(tx),
            writer,
            limit,
            seen: 0,
        })
    }

    /// Adds the next chunk; refuses the upload once it passes the limit.
    pub async fn push(&mut self, chunk: Bytes) -> Result<(), UploadError> {
        self.seen += chunk.len() as u64;
        if self.seen > self.limit {
            return Err(UploadError::TooLarge { limit: self.limit });
        }
        let Some(tx) = &self.tx else {
            return Err(UploadError::Io(io::Error::other("upload already finished")));
        };
        if tx.send(chunk).await.is_err() {
            // The writer stopped: its own error says why.
            self.tx = None;
            return Err(self.writer_error().await);
        }
        Ok(())
    }

    async fn writer_error(&mut self) -> UploadError {
        match (&mut self.writer).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => UploadError::Io(io::Error::other("writer ended early")),
            Err(e) => UploadError::Io(io::Error::other(e.to_string())),
        }
    }

    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    /// Flushes to disk and returns the file with its hashes.
    pub async fn finish(mut self) -> Result<Received, UploadError> {
        self.tx = None;
        match (&mut self.writer).await {
            Ok(r) => r,
            Err(e) => Err(UploadError::Io(io::Error::other(e.to_string()))),
        }
    }
}

fn write_all(
    mut file: File,
    guard: SpoolFile,
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<Received, UploadError> {
    let mut sha256 = Sha256::new();
    let mut sha1 = Sha1::new();
    let mut md5 = Md5::new();
    let mut size = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        file.write_all(&chunk)?;
        sha256.update(&chunk);
        sha1.update(&chunk);
        md5.update(&chunk);
        size += chunk.len() as u64;
    }
    // Not synced here: a sample already in quarantine is dropped unsynced,
    // and a new one is synced by quarantine::store before it is moved in.
    Ok(Received {
        file: guard,
        size,
        sha256: hex::encode(sha256.finalize()),
        sha1: hex::encode(sha1.finalize()),
        md5: hex::encode(md5.finalize()),
    })
}
