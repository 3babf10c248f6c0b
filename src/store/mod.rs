//! The Postgres connection pool and the schema migrations every process
//! role shares. A worker's pool connects lazily and gives up on a
//! connection quickly, so a database outage turns into a fast 503, never a
//! hung request. The service connects with `database.url`, migrations
//! with `database.migrate_url` (the schema's owner; see [`role`]).

pub mod durability;
pub mod role;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::Settings;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database.url: {0}")]
    Url(#[source] sqlx::Error),
    #[error("cannot reach the database: {0}")]
    Unreachable(#[source] sqlx::Error),
    #[error("cannot read the schema's version: {0}")]
    Query(#[source] sqlx::Error),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A pool that opens connections on first use, as the service's role.
pub fn lazy_pool(settings: &Settings) -> Result<PgPool, StoreError> {
    lazy_pool_at(settings, &settings.database.url)
}

fn lazy_pool_at(settings: &Settings, url: &str) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = url.parse().map_err(StoreError::Url)?;
    let options = options.application_name("sandgnat");
    Ok(PgPoolOptions::new()
        .max_connections(settings.database.max_connections)
        .min_connections(0)
        // No ping before every use: it doubled a submission's round trips.
        // A connection that broke while idle fails its statement, which
        // answers 503 (is_unavailable) and is not reused; the submit path
        // pings once itself before a large upload.
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_millis(settings.database.acquire_timeout_ms))
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(options))
}

/// Connects now (for commands and the master), failing with the reason.
pub async fn connect(settings: &Settings) -> Result<PgPool, StoreError> {
    let pool = lazy_pool(settings)?;
    pool.acquire().await.map_err(StoreError::Unreachable)?;
    Ok(pool)
}

/// Connects now as the schema's owner (`database.migrate_url`).
pub async fn connect_owner(settings: &Settings) -> Result<PgPool, StoreError> {
    let pool = lazy_pool_at(settings, settings.database.migrate_url())?;
    pool.acquire().await.map_err(StoreError::Unreachable)?;
    Ok(pool)
}

/// Applies every pending migration; safe to run from several processes.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The newest migration applied to the database (0 on an empty one).
pub async fn schema_version(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let applied = sqlx::query_scalar::<_, Option<i64>>(
        "SELECT max(version) FROM _sqlx_migrations WHERE success",
    )
    .fetch_one(pool)
    .await;
    match applied {
        Ok(v) => Ok(v.unwrap_or(0)),
        // undefined_table: nothing was ever migrated here.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => Ok(0),
        Err(e) => Err(e),
    }
}

/// Connects as the service and makes sure the schema is current, applying
/// pending migrations as the owner (`database.migrate_url`) only when
/// there are some: a service role may not run DDL, not even the
/// migrator's `CREATE TABLE IF NOT EXISTS`.
pub async fn connect_current(settings: &Settings) -> Result<PgPool, StoreError> {
    let pool = connect(settings).await?;
    if schema_version(&pool).await.map_err(StoreError::Query)? < latest_migration() {
        let owner = connect_owner(settings).await?;
        let applied = migrate(&owner).await;
        owner.close().await;
        applied?;
    }
    Ok(pool)
}

/// The newest migration this binary knows.
pub fn latest_migration() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// A database operation given up after `deadline`, as a pool timeout (so
/// [`is_unavailable`] answers 503): a database that stops answering
/// without resetting the connection must not hang its caller.
pub async fn within<T>(
    deadline: Duration,
    op: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(deadline, op)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// Whether an error is a pooled connection found dead when used (the
/// pool does not ping first; see `lazy_pool`): a statement that is safe to
/// repeat may go again, on another connection.
pub fn is_dead_connection(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::Protocol(_))
}

/// Whether a statement that failed with this error may have committed all
/// the same: the connection broke, or the server ended the session
/// (admin or crash shutdown, class 08), after the statement was sent, so
/// its answer was lost, not necessarily its commit. A caller that sent
/// the statement must say "may or may not be recorded", never "nothing
/// was recorded". (Errors from getting a connection come before anything
/// was sent: keep them apart.)
pub fn may_have_committed(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed
    ) || matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| {
        c == "57P01" || c == "57P02" || c.starts_with("08")
    }))
}

/// Whether an error means the database could not be reached (answer 503
/// and let the client retry) rather than a fault in what we sent.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
    ) || matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}
