//! Sessions of the status page: the API key is given once on the login
//! form, and the browser then holds a random token, never the key. The
//! token's SHA-256 is kept in Postgres with the key it stands for, so every
//! worker recognises it, logout really ends it, and revoking the key ends
//! it at once (the key is joined on every read).

use std::time::Duration;

use axum::http::{header, HeaderMap};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::auth::{Caller, Role};

/// The cookie's name. `__Secure-` makes browsers refuse it unless it came
/// over HTTPS with `Secure`, so a plain-HTTP answer cannot plant one.
pub const COOKIE: &str = "__Secure-sandgnat-status";

/// How long a session lasts from login, whatever happens meanwhile.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// Bound on each session query, so a database that stops answering makes
/// the page say so instead of hanging it.
const DEADLINE: Duration = Duration::from_secs(3);

/// A session token as the cookie carries it: 64 lowercase hex digits.
pub struct Token(String);

impl Token {
    fn generate() -> Self {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        Token(hex::encode(raw))
    }

    fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.0.as_bytes()).to_vec()
    }

    /// The token a request's `Cookie` headers carry, if well formed.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE)
            .map(|(_, value)| value.trim())
            .filter(|v| v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .map(|v| Token(v.to_owned()))
    }

    /// The `Set-Cookie` value that gives the browser this token.
    pub fn set_cookie(&self) -> String {
        format!(
            "{COOKIE}={}; Path=/status; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
            self.0,
            LIFETIME.as_secs()
        )
    }
}

/// The `Set-Cookie` value that makes the browser forget its token.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/status; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

/// Opens a session for `caller`; expired sessions are swept on the way.
pub async fn create(db: &PgPool, caller: &Caller) -> Result<Token, sqlx::Error> {
    let token = Token::generate();
    crate::store::within(DEADLINE, async {
        sqlx::query("DELETE FROM status_sessions WHERE expires_at < now()")
            .execute(db)
            .await?;
        sqlx::query(
            "INSERT INTO status_sessions (token_hash, api_key_id, expires_at)
             VALUES ($1, $2, now() + make_interval(secs => $3))",
        )
        .bind(token.hash())
        .bind(caller.key_id)
        .bind(LIFETIME.as_secs_f64())
        .execute(db)
        .await
    })
    .await?;
    Ok(token)
}

/// The caller a live session stands for; `None` when the session is
/// unknown, expired, or its key revoked.
pub async fn resolve(db: &PgPool, token: &Token) -> Result<Option<Caller>, sqlx::Error> {
    let row: Option<(i64, String, String)> = crate::store::within(
        DEADLINE,
        sqlx::query_as(
            "SELECT k.id, k.name, k.role
               FROM status_sessions s JOIN api_keys k ON k.id = s.api_key_id
              WHERE s.token_hash = $1 AND s.expires_at > now() AND k.revoked_at IS NULL",
        )
        .bind(token.hash())
        .fetch_optional(db),
    )
    .await?;
    Ok(row.and_then(|(key_id, name, role)| {
        Some(Caller {
            key_id,
            name,
            role: Role::parse(&role)?,
        })
    }))
}

/// Ends a session (logout); an unknown token is already ended.
pub async fn end(db: &PgPool, token: &Token) -> Result<(), sqlx::Error> {
    crate::store::within(
        DEADLINE,
        sqlx::query("DELETE FROM status_sessions WHERE token_hash = $1")
            .bind(token.hash())
            .execute(db),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_a_well_formed_token_is_read_from_cookies() {
        let good = "ab".repeat(32);
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={good}")).unwrap(),
        );
        assert_eq!(Token::from_headers(&h).map(|t| t.0), Some(good));
        for bad in [
            "AB".repeat(32),
            "ab".repeat(31),
            format!("{}\"", "a".repeat(63)),
        ] {
            let mut h = HeaderMap::new();
            h.append(
                header::COOKIE,
                HeaderValue::from_str(&format!("{COOKIE}={bad}")).unwrap(),
            );
            assert!(Token::from_headers(&h).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_cookie_is_locked_down() {
        let c = Token::generate().set_cookie();
        for part in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/status"] {
            assert!(c.contains(part), "{c}");
        }
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_session_ends_at_logout_and_with_its_key(db: PgPool) {
        let key = crate::auth::create_key(&db, "ops", "reader").await.unwrap();
        let ring = crate::auth::KeyRing::default();
        ring.refresh(&db).await.unwrap();
        let caller = ring.authenticate(Some(&key)).unwrap();
        let token = create(&db, &caller).await.unwrap();
        let seen = resolve(&db, &token).await.unwrap().expect("live session");
        assert_eq!((seen.key_id, seen.role), (caller.key_id, Role::Reader));
        let stored: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM status_sessions")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_ne!(stored, token.0.as_bytes(), "only the hash is stored");

        crate::auth::revoke_key(&db, "ops").await.unwrap();
        assert!(resolve(&db, &token).await.unwrap().is_none());

        let key2 = crate::auth::create_key(&db, "ops2", "admin").await.unwrap();
        ring.refresh(&db).await.unwrap();
        let caller2 = ring.authenticate(Some(&key2)).unwrap();
        let token2 = create(&db, &caller2).await.unwrap();
        end(&db, &token2).await.unwrap();
        assert!(resolve(&db, &token2).await.unwrap().is_none());
    }
}
