//! Whether the database keeps what it acknowledges. A 202 promises that a
//! submission is recorded; with `fsync` off on the server, or
//! `synchronous_commit` off for our sessions (`ALTER DATABASE`/`ROLE ...
//! SET`, or the server's default), a crash can lose commits that were
//! already answered. The recorder, whose sessions commit every submission,
//! reads both settings when it starts and publishes the verdict in the
//! scoreboard, where `/readyz` and the metrics read it. It is reported,
//! never enforced: the operator may have chosen speed over durability.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use sqlx::PgPool;

use crate::scoreboard::Scoreboard;

const DURABLE: u64 = 1;
const NOT_DURABLE: u64 = 2;

/// How long to wait between tries while the database is unreachable.
const RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    Durable,
    /// Why not, for the log and `/readyz`.
    NotDurable(String),
}

/// The verdict on the two settings as a session sees them.
pub fn assess(synchronous_commit: &str, fsync: &str) -> Durability {
    let mut why = Vec::new();
    if !is_on(fsync) {
        why.push(format!(
            "fsync = {fsync} on the database server: a crash can lose or corrupt committed rows"
        ));
    }
    // `local`, `remote_write`, `remote_apply` and `on` all wait for the
    // local WAL flush; only `off` answers before it.
    if synchronous_commit.eq_ignore_ascii_case("off") {
        why.push(
            "synchronous_commit = off for the service's sessions: a database crash can lose \
             submissions already answered 202"
                .to_string(),
        );
    }
    if why.is_empty() {
        Durability::Durable
    } else {
        Durability::NotDurable(why.join("; "))
    }
}

pub(crate) fn is_on(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "on" | "true" | "yes" | "1")
}

/// Reads the settings on one of `pool`'s sessions.
pub async fn read(pool: &PgPool) -> Result<Durability, sqlx::Error> {
    let (sync, fsync): (String, String) =
        sqlx::query_as("SELECT current_setting('synchronous_commit'), current_setting('fsync')")
            .fetch_one(pool)
            .await?;
    Ok(assess(&sync, &fsync))
}

/// Reads the settings until the database answers, then publishes them.
pub async fn check_until_known(pool: PgPool, board: std::sync::Arc<Scoreboard>) {
    loop {
        match crate::store::within(Duration::from_secs(5), read(&pool)).await {
            Ok(d) => return publish(&board, &d),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the database's durability settings yet");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Stores the verdict for every process to read, and logs it when it
/// changed: once per master, not once per recorder (HUP replaces the
/// recorder, and the scoreboard outlives it).
pub fn publish(board: &Scoreboard, d: &Durability) {
    let h = board.header();
    let (state, reason) = match d {
        Durability::Durable => (DURABLE, ""),
        Durability::NotDurable(why) => (NOT_DURABLE, why.as_str()),
    };
    h.db_durability_reason.store(reason);
    let before = h.db_durability.swap(state, Relaxed);
    match (before, state) {
        (b, NOT_DURABLE) if b != NOT_DURABLE => {
            tracing::warn!(reason, "the database does not make commits durable; submissions answered 202 can be lost in a crash")
        }
        (NOT_DURABLE, DURABLE) => tracing::info!("the database makes commits durable again"),
        _ => {}
    }
}

/// What was published, if anything yet (0, the zeroed scoreboard's
/// value, is not yet known).
pub fn published(board: &Scoreboard) -> Option<Durability> {
    let h = board.header();
    match h.db_durability.load(Relaxed) {
        DURABLE => Some(Durability::Durable),
        NOT_DURABLE => Some(Durability::NotDurable(h.db_durability_reason.load())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_off_settings_are_not_durable() {
        for sync in ["on", "local", "remote_write", "remote_apply"] {
            assert_eq!(assess(sync, "on"), Durability::Durable, "{sync}");
        }
        let Durability::NotDurable(why) = assess("off", "on") else {
            panic!("synchronous_commit = off passed")
        };
        assert!(why.contains("synchronous_commit"), "{why}");
        let Durability::NotDurable(why) = assess("on", "off") else {
            panic!("fsync = off passed")
        };
        assert!(why.contains("fsync"), "{why}");
        let Durability::NotDurable(why) = assess("off", "off") else {
            panic!("both off passed")
        };
        assert!(why.contains("fsync") && why.contains("synchronous_commit"));
        assert!(why.len() <= crate::scoreboard::Text::CAPACITY, "{why}");
    }

    #[test]
    fn the_verdict_is_published_and_read_back() {
        let board = Scoreboard::create().unwrap();
        assert_eq!(published(&board), None);
        let off = assess("off", "on");
        publish(&board, &off);
        assert_eq!(published(&board), Some(off));
        publish(&board, &Durability::Durable);
        assert_eq!(published(&board), Some(Durability::Durable));
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_session_sees_its_database_s_settings(pool: PgPool) {
        assert_eq!(read(&pool).await.unwrap(), Durability::Durable);
        let db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&pool)
            .await
            .unwrap();
        sqlx::query(&format!(
            "ALTER DATABASE \"{db}\" SET synchronous_commit = off"
        ))
        .execute(&pool)
        .await
        .unwrap();
        // The setting applies to sessions that start after it.
        pool.close().await;
        let opts = (*pool.connect_options()).clone();
        let fresh = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .unwrap();
        assert!(matches!(
            read(&fresh).await.unwrap(),
            Durability::NotDurable(_)
        ));
    }
}
