//! Key administration for `sandgnat keys`: create (the key is printed
//! once), list (never the secret), revoke.

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::role::Role;

/// What the key store holds of a key: its SHA-256, never the key.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unknown role {0:?}; roles are submitter, reader, bridge and admin")]
    Role(String),
    #[error("invalid key name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    Name(String),
    #[error("a key named {0:?} already exists")]
    Exists(String),
    #[error("no key named {0:?}")]
    NotFound(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

#[derive(Debug, serde::Serialize)]
pub struct KeyInfo {
    pub name: String,
    pub role: String,
    pub prefix: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Creates a key and returns it; only its hash is stored.
pub async fn create_key(db: &PgPool, name: &str, role: &str) -> Result<String, KeyError> {
    let role = Role::parse(role).ok_or_else(|| KeyError::Role(role.to_string()))?;
    if !valid_name(name) {
        return Err(KeyError::Name(name.to_string()));
    }
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let key = format!("sgk_{}", hex::encode(secret));
    let result = sqlx::query(
        "INSERT INTO api_keys (name, role, key_hash, key_prefix) VALUES ($1, $2, $3, $4)",
    )
    .bind(name)
    .bind(role.as_str())
    .bind(hash_key(&key).as_slice())
    .bind(&key[..10])
    .execute(db)
    .await;
    match result {
        Ok(_) => Ok(key),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
            Err(KeyError::Exists(name.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn list_keys(db: &PgPool) -> Result<Vec<KeyInfo>, KeyError> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT name, role, key_prefix, created_at, revoked_at FROM api_keys ORDER BY name",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| KeyInfo {
            name: r.get("name"),
            role: r.get("role"),
            prefix: r.get("key_prefix"),
            created_at: r.get("created_at"),
            revoked_at: r.get("revoked_at"),
        })
        .collect())
}

pub async fn revoke_key(db: &PgPool, name: &str) -> Result<(), KeyError> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE name = $1")
            .bind(name)
            .execute(db)
            .await?;
    if done.rows_affected() == 0 {
        return Err(KeyError::NotFound(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrations = "./migrations")]
    async fn bad_names_roles_and_duplicates_are_refused(db: PgPool) {
        assert!(matches!(
            create_key(&db, "x", "root").await,
            Err(KeyError::Role(_))
        ));
        assert!(matches!(
            create_key(&db, "a b", "admin").await,
            Err(KeyError::Name(_))
        ));
        create_key(&db, "ops", "admin").await.unwrap();
        assert!(matches!(
            create_key(&db, "ops", "admin").await,
            Err(KeyError::Exists(_))
        ));
        assert!(matches!(
            revoke_key(&db, "nobody").await,
            Err(KeyError::NotFound(_))
        ));
    }
}
