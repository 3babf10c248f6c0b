//! `GET /v1/samples/{sha256}/content`: the sample's bytes for the bridge,
//! streamed from quarantine (never buffered whole), as an attachment the
//! browser must not sniff or render.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use tokio::io::AsyncReadExt;

use crate::analyses::db_error;
use crate::api_error::ApiError;
use crate::auth::{allow, Caller};
use crate::worker::state::AppState;

const CHUNK: usize = 256 << 10;

pub async fn sample_content(
    State(app): State<AppState>,
    caller: Caller,
    Path(sha256): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(allow::BRIDGE)?;
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_sha256",
            "the sample is named by its sha256: 64 lowercase hex digits",
        ));
    }
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT storage_path, size FROM samples WHERE sha256 = $1")
            .bind(&sha256)
            .fetch_optional(&app.db)
            .await
            .map_err(db_error)?;
    let (path, size) = row.ok_or_else(|| ApiError::not_found(format!("no sample {sha256}")))?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::error!(error = %e, path, "sample recorded but not readable in quarantine");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "sample_unreadable",
            "the sample is recorded but cannot be read from quarantine",
        )
    })?;
    let stream = futures_util::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{sha256}.bin\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
