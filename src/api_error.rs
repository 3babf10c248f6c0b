//! The JSON error every answer that refuses or fails carries, from a
//! worker or from the front end: `{"error": "<code>", "message": "<what
//! and why>"}` (`body`) and a status that fits. Handlers return
//! `Result<_, ApiError>` and use `?`; the front end writes the same
//! `ApiError` through pingora, and its raw refusals the same `body`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds after which a retry may succeed (503, 429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The same error, saying a retry may succeed after `secs` seconds.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Its JSON body.
    pub fn body(&self) -> Vec<u8> {
        body(self.code, &self.message)
    }
}

/// The JSON body of an error answer.
pub fn body(code: &str, message: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: &'a str,
        message: &'a str,
    }
    // Two strings always serialize.
    serde_json::to_vec(&Body {
        error: code,
        message,
    })
    .unwrap_or_default()
}

/// An id from a path or query: a UUID, else 400 `invalid_id` naming `what`
/// it should have been ("an analysis id").
pub fn parse_uuid(raw: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{raw:?} is not {what} (a UUID)"),
        )
    })
}

/// A dependency is down: the client should retry later.
pub fn unavailable(what: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("{what} is unavailable ({why}); nothing was recorded, retry later"),
    )
    .retry_after(5)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let content_type = [(header::CONTENT_TYPE, "application/json")];
        let mut resp = (self.status, content_type, self.body()).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
