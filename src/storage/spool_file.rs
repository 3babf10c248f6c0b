//! A file in the spool that is removed when its guard drops, whatever
//! ends its use (an error, a client gone, a panic), unless it was moved
//! into the quarantine. Intake spools uploads into one; the runner fetches
//! a sample from a remote store into one for its parsers.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

/// A file in the spool, removed when dropped unless moved away.
#[derive(Debug)]
pub struct SpoolFile {
    path: PathBuf,
    /// Set once the file was renamed elsewhere: nothing left to remove.
    moved: AtomicBool,
}

impl SpoolFile {
    /// Takes charge of a file just created at `path`.
    pub fn new(path: PathBuf) -> Self {
        SpoolFile {
            path,
            moved: AtomicBool::new(false),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file was renamed elsewhere: do not remove anything.
    pub fn moved(&self) {
        self.moved.store(true, Ordering::Release);
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if !self.moved.load(Ordering::Acquire) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Bytes gathered before one write on the blocking pool.
const WRITE_BATCH: usize = 1 << 20;

/// Creates `path` (owner-only, never an existing file) and writes `body`
/// to it, a batch of chunks at a time from the blocking pool.
pub(super) async fn write_stream(
    path: PathBuf,
    mut body: BoxStream<'static, io::Result<Bytes>>,
) -> Result<SpoolFile, super::StoreError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let guard = SpoolFile::new(path);
    let mut file = Some(file);
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batched = 0;
    loop {
        let next = body.next().await;
        let end = next.is_none();
        if let Some(chunk) = next {
            let chunk = chunk.map_err(|e| super::StoreError::Unavailable(e.to_string()))?;
            batched += chunk.len();
            batch.push(chunk);
        }
        if batched >= WRITE_BATCH || (end && !batch.is_empty()) {
            let (Some(mut f), chunks) = (file.take(), std::mem::take(&mut batch)) else {
                break;
            };
            batched = 0;
            f = tokio::task::spawn_blocking(move || {
                for c in &chunks {
                    f.write_all(c)?;
                }
                Ok::<_, io::Error>(f)
            })
            .await
            .map_err(|e| io::Error::other(e.to_string()))??;
            file = Some(f);
        }
        if end {
            return Ok(guard);
        }
    }
    Ok(guard)
}
