//! One HTTP/1.1 answer read off a kept-alive connection, by the tests
//! that count what a reload or a crash does to connections. The head is
//! read a byte at a time, so nothing of a next answer is taken with it,
//! and the body by its Content-Length (every answer these tests read has
//! one), so the connection is left at the next answer's first byte. A
//! connection that ends first is an `Err` naming how far it got: that is
//! what those tests count.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The answer said `Connection: close`.
    pub close: bool,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// What the head says, the body still to read.
struct Head {
    status: u16,
    close: bool,
    retry_after: Option<Duration>,
    len: usize,
}

impl Head {
    fn parse(bytes: &[u8]) -> Result<Head, String> {
        let head = String::from_utf8_lossy(bytes).to_ascii_lowercase();
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad head {head:?}"))?;
        let len = field("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no content-length in {head:?}"))?;
        Ok(Head {
            status,
            close: field("connection") == Some("close"),
            retry_after: field("retry-after")
                .and_then(|v| v.parse().ok())
                .map(Duration::from_secs),
            len,
        })
    }

    fn with(self, body: Vec<u8>) -> Answer {
        Answer {
            status: self.status,
            close: self.close,
            retry_after: self.retry_after,
            body,
        }
    }
}

fn ended(head: &[u8]) -> String {
    format!("end of stream after {} bytes", head.len())
}

/// Reads one answer from a blocking stream.
pub fn read_answer(s: &mut impl std::io::Read) -> Result<Answer, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => return Err(ended(&head)),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let head = Head::parse(&head)?;
    let mut body = vec![0u8; head.len];
    s.read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    Ok(head.with(body))
}

/// Reads one answer from an async stream (TLS, as a client sees the
/// front end).
pub async fn read_answer_async(s: &mut (impl AsyncRead + Unpin)) -> Result<Answer, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            Ok(_) => return Err(ended(&head)),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let head = Head::parse(&head)?;
    let mut body = vec![0u8; head.len];
    s.read_exact(&mut body)
        .await
        .map_err(|e| format!("read body: {e}"))?;
    Ok(head.with(body))
}
