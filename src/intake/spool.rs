//! Receiving a sample's bytes. A sample up to `intake.memory_sample_bytes`
//! is held in memory, within a per-worker budget
//! (`intake.memory_budget_bytes`), so a small submission touches no spool
//! file and is hashed in the same blocking hop that scans it. A larger
//! one, or one that finds the budget spent, spills to a spool file on the
//! quarantine filesystem, written and hashed in one pass on the blocking
//! pool so the event loop never hashes. Either way a worker's memory is
//! bounded by the budget, never by a sample's size. A spool file that is
//! not handed on is removed, whatever ends the upload (error, limit,
//! disconnect).
//!
//! A spooling upload holds a blocking thread only while a write is in
//! flight, never while it waits for the client: the chunks that arrived
//! meanwhile go out in one short hop (at most `BATCH` bytes), and the file
//! and hashes stay with the upload between hops. So uploads that trickle,
//! however many, leave the pool to the work that needs it (scans,
//! hashing, quarantine), and a fast upload still moves in large writes.
//! Rejected: a writer thread per upload fed by a channel (what this was):
//! a thousand slow clients held a thousand threads, and once the pool's
//! limit was reached every other request's blocking work waited behind
//! them.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

/// The most one write on the blocking pool takes, so that each hop is
/// short whatever the chunks' sizes.
const BATCH: usize = 512 << 10;
/// Received bytes an upload may hold unwritten; past it, the upload waits
/// for its write in flight before it takes more from the client.
const PENDING: usize = 1 << 20;

pub use crate::storage::{spool_dir, SpoolFile};

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

/// How many bytes of samples a worker may hold in memory at once, and how
/// large one may be and still be held there.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicU64,
    max: u64,
    per_sample: u64,
}

impl MemoryBudget {
    pub fn new(per_sample: u64, max: u64) -> Arc<Self> {
        Arc::new(MemoryBudget {
            used: AtomicU64::new(0),
            max,
            per_sample: per_sample.min(max),
        })
    }

    /// Bytes held now, by every upload of this worker.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.max)
            })
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Memory taken from the budget, given back when dropped.
#[derive(Debug)]
struct Charge {
    taken: u64,
    budget: Arc<MemoryBudget>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.taken);
    }
}

/// A sample being received in memory.
#[derive(Debug)]
struct Receiving {
    bytes: Vec<u8>,
    charge: Charge,
}

/// A sample's bytes held in memory, counted against the budget until
/// dropped.
#[derive(Debug)]
pub struct Held {
    bytes: Bytes,
    _charge: Charge,
}

impl Held {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes, shared (no copy); the budget stays charged until the
    /// `Held` itself drops.
    pub fn bytes(&self) -> Bytes {
        self.bytes.clone()
    }
}

/// Where a received sample's bytes are.
#[derive(Debug)]
pub enum Content {
    Memory(Held),
    File(SpoolFile),
}

impl Content {
    /// The first bytes, for file-type detection.
    pub fn head(&self, n: usize) -> Vec<u8> {
        match self {
            Content::Memory(h) => h.bytes[..n.min(h.bytes.len())].to_vec(),
            Content::File(f) => {
                let mut head = vec![0u8; n];
                let got = File::open(f.path())
                    .and_then(|mut f| f.read(&mut head))
                    .unwrap_or(0);
                head.truncate(got);
                head
            }
        }
    }
}

/// The three digests every sample is recorded with.
#[derive(Debug, Clone, PartialEq)]
pub struct Digests {
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
}

#[derive(Default)]
struct Hasher {
    sha256: Sha256,
    sha1: Sha1,
    md5: Md5,
}

impl Hasher {
    fn update(&mut self, b: &[u8]) {
        self.sha256.update(b);
        self.sha1.update(b);
        self.md5.update(b);
    }

    fn finish(self) -> Digests {
        Digests {
            sha256: hex::encode(self.sha256.finalize()),
            sha1: hex::encode(self.sha1.finalize()),
            md5: hex::encode(self.md5.finalize()),
        }
    }
}

/// A fully received sample.
#[derive(Debug)]
pub struct Received {
    pub content: Content,
    pub size: u64,
    /// Known already for a spooled sample (hashed as it was written);
    /// computed by [`Received::digests`] for one held in memory.
    digests: Option<Digests>,
}

impl Received {
    /// The sample's digests. For a sample in memory this hashes it: call
    /// it off the event loop unless the sample is small.
    pub fn digests(&mut self) -> Digests {
        if let Some(d) = &self.digests {
            return d.clone();
        }
        let mut h = Hasher::default();
        if let Content::Memory(held) = &self.content {
            h.update(&held.bytes);
        }
        let d = h.finish();
        self.digests = Some(d.clone());
        d
    }
}

enum State {
    Memory(Receiving),
    Spooling(Spool),
    /// A write failed; its error was taken.
    Failed,
}

/// The spool file with what has been written to it: its digests so far
/// and its size. With the upload between writes, on a blocking thread
/// during one.
struct Sink {
    /// Opened by the first write, on the blocking pool.
    file: Option<File>,
    /// Removes the file unless it is handed on, including when the upload
    /// is dropped with a write in flight (the write's result is dropped).
    guard: SpoolFile,
    hasher: Hasher,
    size: u64,
}

impl Sink {
    /// Blocking: writes and hashes `batch`.
    fn write(mut self: Box<Self>, batch: Vec<Bytes>) -> Result<Box<Self>, UploadError> {
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(self.guard.path())?,
            ),
        };
        for chunk in &batch {
            file.write_all(chunk)?;
            self.hasher.update(chunk);
            self.size += chunk.len() as u64;
        }
        Ok(self)
    }
}

/// An upload going to a spool file: the sink (or the write that has it),
/// and what was received but is not written yet.
struct Spool {
    idle: Option<Box<Sink>>,
    writing: Option<JoinHandle<Result<Box<Sink>, UploadError>>>,
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
}

impl Spool {
    fn new(path: PathBuf) -> Self {
        Spool {
            idle: Some(Box::new(Sink {
                file: None,
                guard: SpoolFile::new(path),
                hasher: Hasher::default(),
                size: 0,
            })),
            writing: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
        }
    }

    /// Takes a chunk: starts a write if none is in flight, and waits for
    /// writes only while too much is waiting to be written.
    async fn feed(&mut self, chunk: Bytes) -> Result<(), UploadError> {
        if !chunk.is_empty() {
            self.pending_bytes += chunk.len();
            self.pending.push_back(chunk);
        }
        if self.writing.as_ref().is_some_and(JoinHandle::is_finished) {
            self.settle().await?;
        }
        while self.pending_bytes >= PENDING {
            self.settle().await?;
            self.start();
        }
        self.start();
        Ok(())
    }

    /// Waits for the write in flight, if any, and takes the sink back.
    async fn settle(&mut self) -> Result<(), UploadError> {
        if let Some(write) = self.writing.take() {
            let sink = write
                .await
                .map_err(|e| UploadError::Io(io::Error::other(e.to_string())))??;
            self.idle = Some(sink);
        }
        Ok(())
    }

    /// Sends up to `BATCH` waiting bytes to the blocking pool, unless a
    /// write is in flight already.
    fn start(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let Some(sink) = self.idle.take() else {
            return;
        };
        let mut batch = Vec::new();
        let mut room = BATCH;
        while room > 0 {
            let Some(mut chunk) = self.pending.pop_front() else {
                break;
            };
            if chunk.len() > room {
                self.pending.push_front(chunk.split_off(room));
            }
            room -= chunk.len();
            self.pending_bytes -= chunk.len();
            batch.push(chunk);
        }
        self.writing = Some(tokio::task::spawn_blocking(move || sink.write(batch)));
    }

    /// Writes what is left and hands the file over with its digests.
    async fn finish(mut self) -> Result<Received, UploadError> {
        loop {
            self.settle().await?;
            if self.pending.is_empty() {
                break;
            }
            self.start();
        }
        let Some(sink) = self.idle.take() else {
            return Err(UploadError::Io(io::Error::other("no spool file")));
        };
        let Sink {
            file,
            guard,
            hasher,
            size,
        } = *sink;
        // Not synced here: a sample already stored is dropped unsynced,
        // and a new one is synced by the local store before it
        // is moved in.
        drop(file);
        Ok(Received {
            content: Content::File(guard),
            size,
            digests: Some(hasher.finish()),
        })
    }
}

/// An upload in progress.
pub struct Upload {
    state: State,
    spool_dir: PathBuf,
    limit: u64,
    seen: u64,
}

impl Upload {
    /// Starts an upload in memory; it spills to the spool when it outgrows
    /// what the budget allows.
    pub fn start(spool_dir: &Path, limit: u64, budget: &Arc<MemoryBudget>) -> Self {
        Upload {
            state: State::Memory(Receiving {
                bytes: Vec::new(),
                charge: Charge {
                    taken: 0,
                    budget: budget.clone(),
                },
            }),
            spool_dir: spool_dir.to_path_buf(),
            limit,
            seen: 0,
        }
    }

    /// Sizes the in-memory buffer for a body whose length was announced,
    /// so that receiving it copies each byte once instead of regrowing the
    /// buffer as chunks come. Only a length that would stay in memory is
    /// used, and only as capacity: the budget is still charged per byte
    /// received, and a body that turns out longer spills as before.
    pub fn expect(&mut self, len: u64) {
        if let State::Memory(held) = &mut self.state {
            if len <= held.charge.budget.per_sample {
                if let Ok(len) = usize::try_from(len) {
                    held.bytes.reserve_exact(len);
                }
            }
        }
    }

    /// Adds the next chunk; refuses the upload once it passes the limit.
    pub async fn push(&mut self, chunk: Bytes) -> Result<(), UploadError> {
        self.seen += chunk.len() as u64;
        if self.seen > self.limit {
            return Err(UploadError::TooLarge { limit: self.limit });
        }
        if let State::Memory(held) = &mut self.state {
            let n = chunk.len() as u64;
            let charge = &mut held.charge;
            let fits = charge.taken + n <= charge.budget.per_sample;
            if fits && charge.budget.try_take(n) {
                charge.taken += n;
                held.bytes.extend_from_slice(&chunk);
                return Ok(());
            }
            self.spill();
        }
        let State::Spooling(spool) = &mut self.state else {
            return Err(UploadError::Io(io::Error::other("upload already failed")));
        };
        if let Err(e) = spool.feed(chunk).await {
            // The file went with the failed write (its guard removed it).
            self.state = State::Failed;
            return Err(e);
        }
        Ok(())
    }

    /// Moves what is held in memory to a new spool file (owner-only, made
    /// by the first write); the memory goes back to the budget.
    fn spill(&mut self) {
        let path = self
            .spool_dir
            .join(format!("upload-{:032x}", rand::random::<u128>()));
        let State::Memory(held) = std::mem::replace(&mut self.state, State::Failed) else {
            return;
        };
        let first = Bytes::from(std::mem::take(&mut { held }.bytes));
        let mut spool = Spool::new(path);
        if !first.is_empty() {
            spool.pending_bytes = first.len();
            spool.pending.push_back(first);
        }
        self.state = State::Spooling(spool);
    }

    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    /// The whole sample: in memory, or in a spool file with its digests.
    pub async fn finish(self) -> Result<Received, UploadError> {
        match self.state {
            State::Memory(held) => Ok(Received {
                size: held.bytes.len() as u64,
                content: Content::Memory(Held {
                    bytes: Bytes::from(held.bytes),
                    _charge: held.charge,
                }),
                digests: None,
            }),
            State::Spooling(spool) => spool.finish().await,
            State::Failed => Err(UploadError::Io(io::Error::other("upload already failed"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sandgnat-spool-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn files_in(d: &Path) -> usize {
        std::fs::read_dir(d).unwrap().count()
    }

    async fn upload(dir: &Path, budget: &Arc<MemoryBudget>, chunks: &[&[u8]]) -> Received {
        let mut u = Upload::start(dir, 1 << 20, budget);
        for c in chunks {
            u.push(Bytes::copy_from_slice(c)).await.unwrap();
        }
        u.finish().await.unwrap()
    }

    #[tokio::test]
    async fn an_announced_length_is_received_without_regrowing() {
        let dir = spool("expect");
        let budget = MemoryBudget::new(4096, 1 << 20);
        let mut u = Upload::start(&dir, 1 << 20, &budget);
        u.expect(3000);
        let start = match &u.state {
            State::Memory(held) => held.bytes.as_ptr(),
            _ => panic!("not in memory"),
        };
        for _ in 0..3 {
            u.push(Bytes::from(vec![7u8; 1000])).await.unwrap();
        }
        match &u.state {
            State::Memory(held) => {
                assert_eq!(held.bytes.as_ptr(), start, "the buffer moved");
                assert_eq!(held.bytes.capacity(), 3000);
            }
            _ => panic!("spilled"),
        }
        // A length beyond what stays in memory reserves nothing.
        let mut big = Upload::start(&dir, 1 << 20, &budget);
        big.expect(1 << 20);
        assert!(matches!(&big.state, State::Memory(h) if h.bytes.capacity() == 0));
        assert_eq!(u.finish().await.unwrap().size, 3000);
    }

    #[tokio::test]
    async fn small_samples_stay_in_memory_and_large_ones_spill() {
        let dir = spool("spill");
        let budget = MemoryBudget::new(8, 1024);
        let mut small = upload(&dir, &budget, &[b"abc", b"def"]).await;
        assert!(matches!(small.content, Content::Memory(_)));
        assert_eq!(files_in(&dir), 0);
        assert_eq!(budget.used(), 6);
        let mut large = upload(&dir, &budget, &[b"abcdef", b"ghijkl"]).await;
        assert!(matches!(large.content, Content::File(_)));
        assert_eq!(files_in(&dir), 1);
        // The spilled sample gave its memory back; the small one holds 6.
        assert_eq!(budget.used(), 6);
        assert_eq!(large.size, 12);
        let Content::File(f) = &large.content else {
            unreachable!()
        };
        assert_eq!(std::fs::read(f.path()).unwrap(), b"abcdefghijkl");
        // Both paths hash the same way.
        let whole = upload(&dir, &MemoryBudget::new(64, 64), &[b"abcdefghijkl"])
            .await
            .digests();
        assert_eq!(large.digests(), whole);
        assert_eq!(
            small.digests().sha256,
            "bef57ec7f53a6d40beb640a780a639c83bc29ac8a9816f1fc6c5c6dcd93c4721"
        );
        drop((small, large));
        assert_eq!(budget.used(), 0);
        assert_eq!(files_in(&dir), 0);
    }

    #[tokio::test]
    async fn a_spent_budget_sends_samples_to_the_spool() {
        let dir = spool("budget");
        let budget = MemoryBudget::new(100, 10);
        let first = upload(&dir, &budget, &[b"0123456789"]).await;
        assert!(matches!(first.content, Content::Memory(_)));
        let second = upload(&dir, &budget, &[b"x"]).await;
        assert!(matches!(second.content, Content::File(_)));
        drop(first);
        let third = upload(&dir, &budget, &[b"y"]).await;
        assert!(matches!(third.content, Content::Memory(_)));
    }

    #[test]
    fn spooling_uploads_hold_no_blocking_thread_while_they_wait() {
        // One blocking thread: an upload that kept it while waiting for its
        // client would stop every other upload.
        let rt = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = spool("pool");
            let budget = MemoryBudget::new(0, 0);
            let mut waiting = Vec::new();
            for i in 0..3u8 {
                let mut u = Upload::start(&dir, 1 << 20, &budget);
                u.push(Bytes::from(vec![i; 1000])).await.unwrap();
                waiting.push(u);
            }
            let mut fast = Upload::start(&dir, 1 << 24, &budget);
            for _ in 0..8 {
                fast.push(Bytes::from(vec![9u8; 1 << 20])).await.unwrap();
            }
            let done = tokio::time::timeout(std::time::Duration::from_secs(20), fast.finish())
                .await
                .expect("the pool's only thread was free for the fast upload")
                .unwrap();
            assert_eq!(done.size, 8 << 20);
            for (i, mut u) in waiting.into_iter().enumerate() {
                u.push(Bytes::from(vec![i as u8; 24])).await.unwrap();
                let r = u.finish().await.unwrap();
                let Content::File(f) = &r.content else {
                    panic!("not spooled")
                };
                assert_eq!(std::fs::read(f.path()).unwrap(), vec![i as u8; 1024]);
            }
        });
    }

    #[tokio::test]
    async fn over_the_limit_is_refused_and_gives_memory_back() {
        let dir = spool("limit");
        let budget = MemoryBudget::new(4, 4);
        let mut u = Upload::start(&dir, 10, &budget);
        u.push(Bytes::from_static(b"123456")).await.unwrap();
        assert!(matches!(u.state, State::Spooling(_)));
        let e = u.push(Bytes::from_static(b"78901")).await.unwrap_err();
        assert!(matches!(e, UploadError::TooLarge { limit: 10 }));
        // The spilled bytes went back to the budget; the end-to-end tests
        // see the spool file removed once the writer stops.
        assert_eq!(budget.used(), 0);
    }
}
