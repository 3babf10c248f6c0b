//! The frames between a worker and the recorder, over the recorder's Unix
//! socket: a 4-byte big-endian length, then one JSON message. A worker
//! sends `Request`s; the recorder answers each with a `Reply::Done`
//! carrying its `seq`, in commit order, and says `Reply::GoAway` once when
//! it is stopping (it still answers what it has read).

use std::io;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::intake::idempotency::Prior;
use crate::intake::record::Row;

/// Bounds a frame, so a broken peer cannot make the other side allocate
/// without limit. A row is a few KiB: YARA matches are bounded in count,
/// filenames and tags in length.
pub const MAX_FRAME: usize = 4 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub seq: u64,
    pub row: Row,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Done {
        seq: u64,
        outcome: Outcome,
    },
    /// The recorder is stopping: send nothing more on this connection.
    GoAway,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Committed,
    /// The row's idempotency key was used first: nothing of the row was
    /// written, and this is what the key holds.
    Existing(Prior),
    /// The database could not be reached: nothing was recorded.
    Unavailable(String),
    /// The database refused the row: nothing was recorded.
    Refused(String),
    /// The statement did not finish in time: it may still commit.
    Unconfirmed,
    /// The row relied on stored bytes that were purged meanwhile: nothing
    /// was recorded.
    Purged,
}

pub fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let mut frame = vec![0; 4];
    serde_json::to_writer(&mut frame, msg).map_err(io::Error::other)?;
    let len = u32::try_from(frame.len() - 4)
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// Reads one message; `None` at a clean end of stream. Not cancel-safe:
/// each side reads from one task that does nothing else.
pub async fn read<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {n} bytes, over {MAX_FRAME}"),
        ));
    }
    buf.resize(n, 0);
    r.read_exact(buf).await?;
    serde_json::from_slice(buf)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_reads_back_and_an_oversized_one_is_refused() {
        let reply = Reply::Done {
            seq: 7,
            outcome: Outcome::Refused("bad".into()),
        };
        let mut bytes = encode(&reply).unwrap();
        bytes.extend(encode(&Reply::GoAway).unwrap());
        let mut r = &bytes[..];
        let mut buf = Vec::new();
        match read::<Reply, _>(&mut r, &mut buf).await.unwrap() {
            Some(Reply::Done { seq: 7, outcome }) => {
                assert_eq!(outcome, Outcome::Refused("bad".into()))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read::<Reply, _>(&mut r, &mut buf).await.unwrap(),
            Some(Reply::GoAway)
        ));
        assert!(read::<Reply, _>(&mut r, &mut buf).await.unwrap().is_none());

        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let err = read::<Reply, _>(&mut &huge[..], &mut buf)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
