//! Lease tokens and the heartbeat. A claim issues each job a random token
//! (128 bits from the OS) and keeps only its SHA-256 on the job, so the
//! token cannot be guessed from anything another caller sees (job id,
//! attempt) nor read back from the database. Every holder call is fenced
//! by it: an expired or re-claimed lease changes nothing. A heartbeat
//! extends the lease (by any length up to the cap the HTTP layer enforces)
//! and may attach a progress document.

use std::time::Duration;

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use super::enqueue::JobId;
use super::error::QueueError;

/// The secret a claim hands its holder: 32 lowercase hex digits. Its
/// `Debug` hides it, so a logged job does not leak its lease.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct LeaseToken(String);

impl LeaseToken {
    pub fn generate() -> Self {
        let mut raw = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        LeaseToken(hex::encode(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(super) fn hash_of(token: &str) -> Vec<u8> {
        Sha256::digest(token.as_bytes()).to_vec()
    }
}

impl std::fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseToken(..)")
    }
}

/// Returns the new lease expiry.
pub async fn heartbeat(
    conn: &mut PgConnection,
    id: JobId,
    token: &str,
    lease: Duration,
    progress: Option<serde_json::Value>,
) -> Result<chrono::DateTime<chrono::Utc>, QueueError> {
    let until: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "UPDATE jobs SET lease_until = now() + make_interval(secs => $3), updated_at = now(),
                progress = COALESCE($4, progress)
          WHERE id = $1 AND lease_token_hash = $2 AND state = 'running' AND lease_until > now()
         RETURNING lease_until",
    )
    .bind(id)
    .bind(LeaseToken::hash_of(token))
    .bind(lease.as_secs_f64())
    .bind(progress)
    .fetch_optional(&mut *conn)
    .await?;
    match until {
        Some(t) => Ok(t),
        None => Err(fence_failure(conn, id).await),
    }
}

/// Why a fenced update matched nothing: the job is gone, or it is not held
/// with that token any more.
pub(super) async fn fence_failure(conn: &mut PgConnection, id: JobId) -> QueueError {
    match sqlx::query_scalar::<_, i32>("SELECT 1 FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
    {
        Ok(Some(_)) => QueueError::StaleLease,
        Ok(None) => QueueError::NotFound,
        Err(e) => QueueError::Db(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_128_random_bits_in_hex_and_debug_hides_them() {
        let a = LeaseToken::generate();
        let b = LeaseToken::generate();
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(!format!("{a:?}").contains(a.as_str()));
        assert_eq!(LeaseToken::hash_of(a.as_str()).len(), 32);
    }
}
