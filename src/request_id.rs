//! The request id (`X-Request-Id`) that every log line, answer and audit
//! row of a request carries: which id from outside is kept, and the fresh
//! one made when none is. One rule for the front end, which sets the id
//! for the workers, and for a worker, which may be reached directly on its
//! socket, so that no id one of them refuses reaches a log or an audit row
//! through the other.

use http::HeaderMap;

/// The longest id kept.
const MAX_LEN: usize = 128;

/// Whether an id from a client is kept: short and plain (letters, digits
/// and `-_.:`), so it cannot inject anything into a log line, a header or
/// an audit row.
pub fn acceptable(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// The request's own id, when it has one that is kept.
pub fn of(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .map(|v| v.as_bytes())
        .filter(|v| acceptable(v))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

/// A new id: 128 random bits as 32 hex digits.
pub fn fresh() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(id: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-request-id",
            http::HeaderValue::from_bytes(id).expect("a valid header value"),
        );
        h
    }

    #[test]
    fn short_plain_ids_are_kept() {
        let longest = "x".repeat(MAX_LEN);
        for id in ["abc-123", "0a1b.c:d_e", longest.as_str()] {
            assert_eq!(of(&with(id.as_bytes())).as_deref(), Some(id), "{id}");
        }
        assert_eq!(of(&HeaderMap::new()), None);
        let id = fresh();
        assert!(id.len() == 32 && acceptable(id.as_bytes()), "{id}");
    }

    /// The worker and the download route used to keep any printable ASCII
    /// (quotes, slashes, `%`), and the bridge's audit rows any id of any
    /// length; the front end kept only these. One rule now, the front end's.
    #[test]
    fn ids_the_front_end_refused_are_refused_everywhere() {
        let long = "x".repeat(MAX_LEN + 1);
        for id in [
            "",
            "a b",
            "a/b",
            "a\"b",
            "<script>",
            "%0d%0a",
            "{\"x\":1}",
            "é",
            long.as_str(),
        ] {
            assert!(!acceptable(id.as_bytes()), "{id:?}");
            if let Ok(v) = http::HeaderValue::from_str(id) {
                let mut h = HeaderMap::new();
                h.insert("x-request-id", v);
                assert_eq!(of(&h), None, "{id:?}");
            }
        }
        assert_eq!(of(&with(b"tab\there")), None);
    }
}
