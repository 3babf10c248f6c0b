//! The Postgres connection pool and the schema migrations every process
//! role shares. A worker's pool connects lazily and gives up on a
//! connection quickly, so a database outage turns into a fast 503, never a
//! hung request. The service connects with `database.url`, migrations
//! with `database.migrate_url` (the schema's owner; see [`role`]).
//!
//! Every session says which node opened it: `sandgnat.node` (which the
//! `node` columns of analyses and audit rows default to) and the
//! application name `sandgnat@<node>` (`pg_stat_activity`). And every
//! session asks the server to probe its TCP peer within seconds, so the
//! sessions of a node that vanished (power, network) end, and the locks
//! they held are let go, long before the system's two-hour default.

pub mod autovacuum;
pub mod durability;
pub mod lead;
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
    let options = options
        .application_name(&format!("sandgnat@{}", settings.node.name))
        .options(session_settings(&settings.node.name));
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

/// What every session of the node sets at its start. The node's name is
/// checked (`config::is_node_name`) to need no quoting here.
fn session_settings(node: &str) -> [(&'static str, String); 4] {
    [
        ("sandgnat.node", node.to_string()),
        ("tcp_keepalives_idle", KEEPALIVE_IDLE_S.to_string()),
        ("tcp_keepalives_interval", KEEPALIVE_INTERVAL_S.to_string()),
        ("tcp_keepalives_count", KEEPALIVE_COUNT.to_string()),
    ]
}

/// The server probes a silent client after this many seconds, then every
/// `KEEPALIVE_INTERVAL_S`, and ends the session after `KEEPALIVE_COUNT`
/// unanswered probes.
pub const KEEPALIVE_IDLE_S: u32 = 10;
pub const KEEPALIVE_INTERVAL_S: u32 = 5;
pub const KEEPALIVE_COUNT: u32 = 3;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn every_session_says_its_node_on_what_it_writes(db: PgPool) {
        let o = db.connect_options();
        let mut settings = Settings::default();
        settings.node.name = "node-x".into();
        settings.database.url = format!(
            "postgres://{}@{}:{}/{}",
            o.get_username(),
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or_default()
        );
        let pool = lazy_pool(&settings).unwrap();
        let (app, idle): (String, String) = sqlx::query_as(
            "SELECT application_name, current_setting('tcp_keepalives_idle')
               FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(app, "sandgnat@node-x");
        assert_eq!(idle, KEEPALIVE_IDLE_S.to_string());

        // Written through the node's pool: its name, without naming it.
        let sha = "a".repeat(64);
        sqlx::query(
            "INSERT INTO samples (sha256, sha1, md5, size, file_type, storage_path)
             VALUES ($1, repeat('b', 40), repeat('c', 32), 1, 'data', '/q/x')",
        )
        .bind(&sha)
        .execute(&pool)
        .await
        .unwrap();
        for (via, id) in [(&pool, uuid::Uuid::now_v7()), (&db, uuid::Uuid::now_v7())] {
            sqlx::query("INSERT INTO analyses (id, sample_sha256) VALUES ($1, $2)")
                .bind(id)
                .bind(&sha)
                .execute(via)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO analysis_audit_log (analysis_id, actor, event) VALUES ($1, 't', 'e')",
            )
            .bind(id)
            .execute(via)
            .await
            .unwrap();
        }
        let nodes: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT a.node, l.node FROM analyses a JOIN analysis_audit_log l ON l.analysis_id = a.id
              ORDER BY a.id",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        // A session that does not say (psql, the test's own) writes none.
        assert_eq!(
            nodes,
            [
                (Some("node-x".to_string()), Some("node-x".to_string())),
                (None, None)
            ]
        );
        pool.close().await;
    }
}
