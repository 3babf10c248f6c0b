//! The recorder's side of its socket: every worker's connection feeds one
//! batcher (`intake::record::run`), and each row's outcome goes back on the
//! connection it came from.

use std::time::Duration;

use sqlx::PgPool;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::wire::{self, Outcome, Reply, Request};
use crate::intake::record::{self, Failure, Pending, Written};
use crate::shutdown::Shutdown;

/// Serves until `shutdown`, then tells every connection to go away and
/// returns once each is closed by its worker and every row read is
/// answered. A worker that never closes is cut by the master at
/// `graceful_timeout`.
pub async fn serve(listener: UnixListener, db: PgPool, deadline: Duration, mut shutdown: Shutdown) {
    let (rows, queued) = mpsc::channel(record::QUEUE);
    let batcher = tokio::spawn(record::run(db, queued, deadline));
    let (goaway, told) = watch::channel(false);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Err(why) = peer_is_a_sibling(&stream) {
                        tracing::warn!(reason = %why, "recorder: refused a connection");
                        continue;
                    }
                    conns.spawn(connection(stream, rows.clone(), told.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "recorder: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.requested() => break,
        }
    }
    drop(listener);
    let _ = goaway.send(true);
    drop(rows);
    while conns.join_next().await.is_some() {}
    let _ = batcher.await;
}

/// Rows come already authenticated, so only the workers may send them:
/// a peer must run as this process's own user (the socket's mode says the
/// same; root, who passes any mode, is refused here).
fn peer_is_a_sibling(stream: &UnixStream) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == me {
        Ok(())
    } else {
        Err(format!(
            "peer pid {:?} runs as uid {}, not the service's uid {me}",
            cred.pid(),
            cred.uid()
        ))
    }
}

async fn connection(stream: UnixStream, rows: mpsc::Sender<Pending>, told: watch::Receiver<bool>) {
    let (mut rd, wr) = stream.into_split();
    let (out, frames) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_frames(wr, frames, told));
    let mut buf = Vec::new();
    loop {
        let Request { seq, row } = match wire::read(&mut rd, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "recorder: a worker's connection failed");
                break;
            }
        };
        let (done, answer) = oneshot::channel();
        if rows.send(Pending { row, done }).await.is_err() {
            break;
        }
        let out = out.clone();
        tokio::spawn(async move {
            let outcome = match answer.await {
                Ok(Ok(Written::New)) => Outcome::Committed,
                Ok(Ok(Written::Existing(prior))) => Outcome::Existing(prior),
                Ok(Err(Failure::Unconfirmed)) => Outcome::Unconfirmed,
                Ok(Err(Failure::Purged)) => Outcome::Purged,
                Ok(Err(Failure::Database(e))) if crate::store::is_unavailable(&e) => {
                    Outcome::Unavailable(e.to_string())
                }
                Ok(Err(Failure::Database(e))) => Outcome::Refused(e.to_string()),
                // The batcher went without answering (it panicked): the
                // row may have been written.
                Err(_) => Outcome::Unconfirmed,
            };
            let _ = out.send(Reply::Done { seq, outcome });
        });
    }
    // The writer ends once every answer for this connection is sent.
    drop(out);
    let _ = writer.await;
}

async fn write_frames(
    mut wr: OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Reply>,
    mut told: watch::Receiver<bool>,
) {
    let mut going = false;
    loop {
        let reply = tokio::select! {
            r = frames.recv() => match r {
                Some(r) => r,
                None => break,
            },
            _ = told.wait_for(|g| *g), if !going => {
                going = true;
                Reply::GoAway
            }
        };
        let sent = match wire::encode(&reply) {
            Ok(frame) => wr.write_all(&frame).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "recorder: cannot answer a worker");
            break;
        }
    }
}
