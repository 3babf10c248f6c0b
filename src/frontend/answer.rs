//! What both halves of the front end (`head`, which reads request heads,
//! and `proxy`, which forwards them) hand each other or do alike: the
//! mark a kept-alive connection carries, and the lingering read after an
//! answer given before the request was read. Apart from both so that neither imports the other
//! for them.

use std::time::Duration;

use async_trait::async_trait;

/// Set on a connection that pingora keeps alive after a request (through
/// `ProxyHttp::persist_connection_context`), so the next head's clock
/// starts at its first byte and the wait before it is the keep-alive's.
pub struct KeptAlive;

/// How long, and how many bytes, a request that was answered before it was
/// read is read further and thrown away before the close (nginx's
/// lingering close).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 4 << 20;

/// Where a lingering read reads from: a raw connection, or pingora's
/// session for a request.
#[async_trait]
pub(super) trait Unread: Send {
    /// Reads what the client sends next and drops it: how many bytes,
    /// `None` at the end or on an error.
    async fn discard(&mut self) -> Option<usize>;
}

/// Reads and drops what the client still sends, for at most `LINGER` and
/// `LINGER_BYTES`: closing a socket with unread bytes in it makes the
/// kernel send a reset, which fails the client's pending write and can
/// destroy the answer before the client reads it.
pub(super) async fn linger(from: &mut impl Unread) {
    let _ = tokio::time::timeout(LINGER, async {
        let mut drained = 0usize;
        while drained < LINGER_BYTES {
            match from.discard().await {
                Some(n) => drained += n,
                None => break,
            }
        }
    })
    .await;
}
