//! Small JSON request bodies for the bridge's calls: read to a bound, then
//! parsed, with a 4xx that says what was wrong.

use axum::body::Body;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::api_error::ApiError;

/// Results may carry a sandbox report; everything else is small.
pub const RESULT_LIMIT: usize = 16 << 20;
pub const SMALL_LIMIT: usize = 64 << 10;

pub async fn json<T: DeserializeOwned + Default>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is over {limit} bytes"),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.to_string())
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not the expected JSON document: {e}"),
        )
    })
}

/// Refuses a document PostgreSQL's jsonb cannot store: one with a NUL
/// (`\u0000`) in a string or a key. Checked before anything is changed,
/// so the answer is a 400 and not a failed statement.
pub fn storable(field: &str, doc: &serde_json::Value) -> Result<(), ApiError> {
    use serde_json::Value;
    let mut stack = vec![doc];
    while let Some(v) = stack.pop() {
        let nul = match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => {
                stack.extend(items);
                false
            }
            Value::Object(map) => {
                stack.extend(map.values());
                map.keys().any(|k| k.contains('\0'))
            }
            _ => false,
        };
        if nul {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("{field}: a string or key holds a NUL character (\\u0000), which cannot be stored"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_nul_anywhere_is_refused() {
        assert!(super::storable("r", &json!({"a": [1, "b", {"c": null}]})).is_ok());
        assert!(super::storable("r", &json!({"a": ["x\u{0}"]})).is_err());
        assert!(super::storable("r", &json!([{"k\u{0}": 1}])).is_err());
    }
}
