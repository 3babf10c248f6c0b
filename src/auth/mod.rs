//! API keys: how they are made, stored (a SHA-256 hash, never the key),
//! checked (in constant time against every known hash) and what each role
//! may do. Workers keep the key list in memory and refresh it every two
//! seconds, so a revoked key stops working everywhere within five.

mod keys;
mod role;
pub mod visibility;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use sqlx::PgPool;
use subtle::ConstantTimeEq;

pub use keys::{create_key, hash_key, list_keys, revoke_key, KeyError, KeyInfo};
pub use role::{Caller, Role};
pub use visibility::Visibility;

use crate::api_error::ApiError;

/// How often workers re-read the key list.
pub const REFRESH: Duration = Duration::from_secs(2);

/// How long a request with an unknown key waits for the key list to be
/// re-read before it answers 503 (the same bound as waiting for a pooled
/// connection).
const MISS_REFRESH_DEADLINE: Duration = Duration::from_millis(1500);

/// What a route accepts. Admin may do everything.
pub mod allow {
    use super::Role;
    pub const SUBMIT: &[Role] = &[Role::Submitter, Role::Admin];
    /// Reading is open to every role; what each sees is `Visibility`'s rule.
    pub const READ: &[Role] = &[Role::Reader, Role::Submitter, Role::Bridge, Role::Admin];
    pub const BRIDGE: &[Role] = &[Role::Bridge, Role::Admin];
    pub const ADMIN: &[Role] = &[Role::Admin];
}

#[derive(Debug, Clone)]
struct KnownKey {
    id: i64,
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// The keys a worker accepts, refreshed from the database.
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: Arc<RwLock<Option<Vec<KnownKey>>>>,
    /// Re-reads caused by unknown keys: a key created a moment ago works at
    /// once, and a client sending bad keys costs the database at most
    /// `MISS_REFRESHES_PER_SEC` queries a second per worker.
    miss_budget: Arc<std::sync::Mutex<(f64, Option<std::time::Instant>)>>,
}

const MISS_REFRESHES_PER_SEC: f64 = 10.0;

impl KeyRing {
    /// Loads the active keys; on failure the previous list stays.
    pub async fn refresh(&self, db: &PgPool) -> Result<(), sqlx::Error> {
        let rows: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, name, role, key_hash FROM api_keys WHERE revoked_at IS NULL",
        )
        .fetch_all(db)
        .await?;
        let keys = rows
            .into_iter()
            .filter_map(|(id, name, role, hash)| {
                Some(KnownKey {
                    id,
                    name,
                    role: Role::parse(&role)?,
                    hash: hash.try_into().ok()?,
                })
            })
            .collect();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(keys);
        Ok(())
    }

    /// Whether an unknown key may trigger a re-read now.
    fn may_refresh_on_miss(&self) -> bool {
        let mut budget = self.miss_budget.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *budget;
        let now = std::time::Instant::now();
        let refill = last.map_or(MISS_REFRESHES_PER_SEC, |t| {
            now.duration_since(t).as_secs_f64() * MISS_REFRESHES_PER_SEC
        });
        *tokens = (*tokens + refill).min(MISS_REFRESHES_PER_SEC);
        *last = Some(now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Authenticates, re-reading the key list once if the key is unknown.
    pub async fn authenticate_fresh(
        &self,
        presented: Option<&str>,
        db: &PgPool,
    ) -> Result<Caller, ApiError> {
        match self.authenticate(presented) {
            Err(e)
                if (e.status == StatusCode::UNAUTHORIZED
                    || e.status == StatusCode::SERVICE_UNAVAILABLE)
                    && presented.is_some_and(|k| !k.is_empty())
                    && self.may_refresh_on_miss() =>
            {
                match crate::store::within(MISS_REFRESH_DEADLINE, self.refresh(db)).await {
                    Ok(()) => self.authenticate(presented),
                    // Unknown here and the database cannot say otherwise:
                    // the key may be new, so answer "retry", not "refused".
                    Err(db_err) => Err(crate::api_error::unavailable("the key store", db_err)),
                }
            }
            other => other,
        }
    }

    /// Keeps the list fresh for as long as the worker runs.
    pub async fn keep_fresh(self, db: PgPool) {
        let mut tick = tokio::time::interval(REFRESH);
        let mut failing = false;
        loop {
            tick.tick().await;
            // A stuck read must not stop the refresher for good.
            match crate::store::within(REFRESH * 2, self.refresh(&db)).await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot refresh API keys; keeping the last list");
                }
                Err(_) => {}
            }
        }
    }

    /// Finds the key, comparing against every stored hash without an early
    /// exit, so timing tells nothing about which hash came close.
    pub fn authenticate(&self, presented: Option<&str>) -> Result<Caller, ApiError> {
        let Some(key) = presented.filter(|k| !k.is_empty()) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send an API key in the X-API-Key header",
            ));
        };
        let guard = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let Some(keys) = guard.as_ref() else {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "keys_unavailable",
                "the key list could not be loaded from the database yet",
            );
            e.retry_after = Some(2);
            return Err(e);
        };
        let presented = hash_key(key);
        let mut found: Option<&KnownKey> = None;
        for k in keys {
            if bool::from(k.hash.ct_eq(&presented)) {
                found = Some(k);
            }
        }
        found
            .map(|k| Caller {
                key_id: k.id,
                name: k.name.clone(),
                role: k.role,
            })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the API key is unknown or revoked",
                )
            })
    }
}

/// Anything the router state can give a key ring (and its database) from.
pub trait HasKeyRing {
    fn key_ring(&self) -> &KeyRing;
    fn key_db(&self) -> &PgPool;
}

impl<S> FromRequestParts<S> for Caller
where
    S: HasKeyRing + Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let key = presented_key(
            parts.headers.get("x-api-key").map(|v| v.as_bytes()),
            parts.headers.get("authorization").map(|v| v.as_bytes()),
        );
        state
            .key_ring()
            .authenticate_fresh(key.as_deref(), state.key_db())
            .await
    }
}

/// The API key a request presents: its `X-API-Key` header or, failing
/// that, the password of HTTP Basic authentication under any user name
/// (TAXII clients know no other way to send a secret). Not UTF-8, or a
/// Basic value that does not decode, is no key.
pub fn presented_key(api_key: Option<&[u8]>, authorization: Option<&[u8]>) -> Option<String> {
    if let Some(key) = api_key {
        return std::str::from_utf8(key).ok().map(str::to_owned);
    }
    let value = std::str::from_utf8(authorization?).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (_user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(password.to_owned())
}

#[cfg(test)]
mod tests {
    use sqlx::PgPool;

    use super::{allow, create_key, hash_key, list_keys, presented_key, revoke_key, KeyRing, Role};

    #[test]
    fn a_key_comes_from_the_header_or_a_basic_password() {
        // "taxii:sg_secret" and "only-a-user"
        let basic = Some(&b"Basic dGF4aWk6c2dfc2VjcmV0"[..]);
        assert_eq!(presented_key(None, basic).as_deref(), Some("sg_secret"));
        assert_eq!(
            presented_key(None, Some(b"basic  dGF4aWk6c2dfc2VjcmV0 ")).as_deref(),
            Some("sg_secret")
        );
        assert_eq!(
            presented_key(Some(b"sg_header"), basic).as_deref(),
            Some("sg_header")
        );
        assert_eq!(presented_key(None, Some(b"Basic b25seS1hLXVzZXI=")), None);
        assert_eq!(
            presented_key(None, Some(b"Bearer dGF4aWk6c2dfc2VjcmV0")),
            None
        );
        assert_eq!(presented_key(None, Some(b"Basic !!!")), None);
        assert_eq!(presented_key(Some(&[0xff]), None), None);
        assert_eq!(presented_key(None, None), None);
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn created_key_authenticates_until_revoked(db: PgPool) {
        let key = create_key(&db, "bridge-1", "bridge").await.unwrap();
        assert!(key.starts_with("sgk_") && key.len() == 68);
        let stored: Vec<u8> =
            sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE name = 'bridge-1'")
                .fetch_one(&db)
                .await
                .unwrap();
        assert_eq!(stored, hash_key(&key).to_vec(), "only the hash is stored");

        let ring = KeyRing::default();
        ring.refresh(&db).await.unwrap();
        let caller = ring.authenticate(Some(&key)).unwrap();
        assert_eq!(caller.role, Role::Bridge);
        assert!(caller.require(allow::BRIDGE).is_ok());
        assert_eq!(caller.require(allow::SUBMIT).unwrap_err().status, 403);
        assert_eq!(
            ring.authenticate(Some("sgk_wrong")).unwrap_err().status,
            401
        );
        assert_eq!(ring.authenticate(None).unwrap_err().status, 401);

        revoke_key(&db, "bridge-1").await.unwrap();
        ring.refresh(&db).await.unwrap();
        assert_eq!(ring.authenticate(Some(&key)).unwrap_err().status, 401);
        let listed = list_keys(&db).await.unwrap();
        assert!(listed[0].revoked_at.is_some());
    }
}
