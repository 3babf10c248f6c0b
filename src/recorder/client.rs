//! A worker's side of the recorder's socket: one connection, opened on
//! first use and again after the recorder goes away, on which every
//! submission of this worker is sent and answered (`wire`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use super::wire::{self, Outcome, Reply, Request};
use crate::intake::record::{Recorded, Row, Submission};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Nothing was sent.
    #[error("the recorder cannot be reached: {0}")]
    Unreachable(std::io::Error),
    #[error("the database cannot be reached: {0}")]
    Unavailable(String),
    #[error("the database refused the record: {0}")]
    Refused(String),
    /// The submission found the bytes stored, and they were purged before
    /// it committed: nothing was recorded.
    #[error("the sample's stored bytes were purged meanwhile")]
    Purged,
    /// The row was sent and its answer never came: it may have committed.
    #[error("the recorder's connection closed before it confirmed the record")]
    Lost,
    /// The database did not confirm in time: the statement may still
    /// commit, so the submission may or may not be recorded.
    #[error("the database did not confirm the record within {0:?}")]
    Unconfirmed(Duration),
}

/// Where a worker's submissions go to be committed.
#[derive(Clone)]
pub struct Recorder(Arc<Inner>);

struct Inner {
    path: PathBuf,
    deadline: Duration,
    seq: AtomicU64,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

/// One connection to the recorder.
struct Conn {
    state: Arc<Mutex<Waiting>>,
    out: mpsc::UnboundedSender<Vec<u8>>,
}

/// Rows sent on a connection and not yet answered. Frames are queued only
/// under this lock and only while `open`, so once a GoAway or the end of
/// the stream closes it, nothing more is sent on that connection.
struct Waiting {
    open: bool,
    answers: HashMap<u64, oneshot::Sender<Outcome>>,
}

impl Recorder {
    /// `deadline` bounds how long a submission waits for its commit,
    /// queueing included: a database that stops answering (a partition, no
    /// reset) must cost a client a 503, not a hung request.
    pub fn new(path: PathBuf, deadline: Duration) -> Self {
        Recorder(Arc::new(Inner {
            path,
            deadline,
            seq: AtomicU64::new(1),
            conn: tokio::sync::Mutex::new(None),
        }))
    }

    /// Records a submission; returns once it is committed.
    pub async fn record(&self, s: &Submission<'_>) -> Result<Recorded, RecordError> {
        // Time-ordered, as job ids (queue::enqueue_many says why). The
        // submission time it carries is on the analysis anyway.
        let row = Row::new(Uuid::now_v7(), s);
        let (analysis_id, queues) = (row.id(), row.queues());
        let seq = self.0.seq.fetch_add(1, Ordering::Relaxed);
        let frame =
            wire::encode(&Request { seq, row }).map_err(|e| RecordError::Refused(e.to_string()))?;
        let answered = async {
            let answer = self.send(seq, frame).await?;
            answer.await.map_err(|_| RecordError::Lost)
        };
        match tokio::time::timeout(self.0.deadline, answered).await {
            Err(_) => Err(RecordError::Unconfirmed(self.0.deadline)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Outcome::Committed)) => Ok(Recorded::New {
                analysis_id,
                queues,
            }),
            Ok(Ok(Outcome::Existing(prior))) => Ok(Recorded::Existing(prior)),
            Ok(Ok(Outcome::Unavailable(why))) => Err(RecordError::Unavailable(why)),
            Ok(Ok(Outcome::Refused(why))) => Err(RecordError::Refused(why)),
            Ok(Ok(Outcome::Purged)) => Err(RecordError::Purged),
            Ok(Ok(Outcome::Unconfirmed)) => Err(RecordError::Unconfirmed(self.0.deadline)),
        }
    }

    async fn send(
        &self,
        seq: u64,
        frame: Vec<u8>,
    ) -> Result<oneshot::Receiver<Outcome>, RecordError> {
        let mut conn = self.0.conn.lock().await;
        let frame = match conn.as_ref() {
            Some(c) => match c.queue(seq, frame) {
                Ok(answer) => return Ok(answer),
                Err(frame) => frame,
            },
            None => frame,
        };
        let fresh = Conn::open(&self.0.path)
            .await
            .map_err(RecordError::Unreachable)?;
        let queued = fresh.queue(seq, frame);
        *conn = Some(fresh);
        queued.map_err(|_| RecordError::Unreachable(std::io::ErrorKind::BrokenPipe.into()))
    }
}

impl Conn {
    async fn open(path: &std::path::Path) -> std::io::Result<Conn> {
        let (rd, wr) = UnixStream::connect(path).await?.into_split();
        let state = Arc::new(Mutex::new(Waiting {
            open: true,
            answers: HashMap::new(),
        }));
        let (out, frames) = mpsc::unbounded_channel();
        let closed = Arc::new(Notify::new());
        tokio::spawn(write_frames(wr, frames, closed.clone()));
        tokio::spawn(read_replies(rd, state.clone(), closed));
        Ok(Conn { state, out })
    }

    /// Queues a frame, if the connection is open, and returns where its
    /// answer will come; a closed connection hands the frame back.
    fn queue(&self, seq: u64, frame: Vec<u8>) -> Result<oneshot::Receiver<Outcome>, Vec<u8>> {
        let Ok(mut w) = self.state.lock() else {
            return Err(frame);
        };
        if !w.open {
            return Err(frame);
        }
        self.out.send(frame).map_err(|e| e.0)?;
        let (tx, rx) = oneshot::channel();
        w.answers.insert(seq, tx);
        Ok(rx)
    }
}

/// Writes queued frames until the connection closes; then writes what was
/// queued before it closed and shuts the write side, which tells the
/// recorder this worker sends nothing more.
async fn write_frames(
    mut wr: OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    closed: Arc<Notify>,
) {
    loop {
        tokio::select! {
            f = frames.recv() => match f {
                Some(f) => if wr.write_all(&f).await.is_err() { return },
                None => return,
            },
            _ = closed.notified() => {
                while let Ok(f) = frames.try_recv() {
                    if wr.write_all(&f).await.is_err() {
                        return;
                    }
                }
                return;
            }
        }
    }
}

async fn read_replies(mut rd: OwnedReadHalf, state: Arc<Mutex<Waiting>>, closed: Arc<Notify>) {
    let mut buf = Vec::new();
    let mut going = false;
    loop {
        match wire::read::<Reply, _>(&mut rd, &mut buf).await {
            Ok(Some(Reply::Done { seq, outcome })) => {
                let tx = state.lock().ok().and_then(|mut w| w.answers.remove(&seq));
                if let Some(tx) = tx {
                    let _ = tx.send(outcome);
                }
            }
            Ok(Some(Reply::GoAway)) if !going => {
                going = true;
                if let Ok(mut w) = state.lock() {
                    w.open = false;
                }
                closed.notify_one();
            }
            Ok(Some(Reply::GoAway)) => {}
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "the recorder's connection failed");
                break;
            }
        }
    }
    // Whatever is still waiting was sent and will not be answered here:
    // dropping its sender tells its submission so (RecordError::Lost).
    if let Ok(mut w) = state.lock() {
        w.open = false;
        w.answers.clear();
    }
    closed.notify_one();
}
