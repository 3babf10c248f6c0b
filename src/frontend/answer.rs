//! What both halves of the front end (`head`, which reads request heads,
//! and `proxy`, which forwards them) hand each other or answer with: the
//! JSON error body and the mark a kept-alive connection carries. Apart from both so that neither imports the other
//! for them.

use bytes::Bytes;

/// Set on a connection that pingora keeps alive after a request (through
/// `ProxyHttp::persist_connection_context`), so the next head's clock
/// starts at its first byte and the wait before it is the keep-alive's.
pub struct KeptAlive;

pub(super) fn json_error(code: &str, message: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({"error": code, "message": message}))
            .unwrap_or_default(),
    )
}
