//! The lead: one process at a time, across every node that shares the
//! database, holds a session-level advisory lock on a connection of its
//! own, and with it the cluster's run-once work (`crate::duties`). The
//! lock is the session's: it goes when the session ends, however that
//! happens, and the server ends it
//!
//! - at once when the holder's process dies (a crash, SIGKILL: its kernel
//!   closes the socket, and the server reads the end of the stream);
//! - after `SILENCE` when the holder stops talking while its socket stays
//!   open (a frozen node; a lost network, whose packets simply stop):
//!   the holder pings every `PING`, and the session is set to end itself
//!   once idle for `SILENCE` (`idle_session_timeout`, PostgreSQL 14 on),
//!   or, on an older server, when the TCP keep-alive probes the session
//!   sends (`store::KEEPALIVE_*`) go unanswered.
//!
//! A holder that cannot ping within `SILENCE` takes its lead as lost and
//! stops, so two holders overlap at most by a ping's deadline; what they
//! run is safe to run twice at once anyway (each duty fences itself).

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

/// How often the holder proves it is there.
pub const PING: Duration = Duration::from_secs(1);

/// How long a silent holder keeps the lead.
pub const SILENCE: Duration = Duration::from_secs(5);

/// The lock's name; one for every duty, so one process holds them all.
const LOCK: &str = "sandgnat.cluster.lead";

/// A held lead: the connection whose session holds the lock.
pub struct Lead {
    conn: PgConnection,
}

/// Whether the server ends a silent session by itself, as `Lead` asks it
/// to; without that (PostgreSQL before 14), a frozen holder keeps the lead
/// until its process dies or its TCP keep-alive fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    Ended,
    KeptAlive,
}

/// Takes the lead if no session holds it, on a pooled connection that
/// then leaves the pool for good (the lock is its session's).
pub async fn try_take(db: &PgPool) -> Result<Option<(Lead, Silence)>, sqlx::Error> {
    let mut conn = db.acquire().await?;
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if !taken {
        return Ok(None);
    }
    let mut conn = conn.detach();
    let silence = match bound_silence(&mut conn).await {
        Ok(s) => s,
        Err(e) => {
            // Not held quietly: the session ends with the connection.
            let _ = conn.close().await;
            return Err(e);
        }
    };
    Ok(Some((Lead { conn }, silence)))
}

/// Asks the server to end this session once it is idle for `SILENCE`,
/// in a transaction or not.
async fn bound_silence(conn: &mut PgConnection) -> Result<Silence, sqlx::Error> {
    let ms = SILENCE.as_millis();
    sqlx::query(&format!("SET idle_in_transaction_session_timeout = {ms}"))
        .execute(&mut *conn)
        .await?;
    match sqlx::query(&format!("SET idle_session_timeout = {ms}"))
        .execute(&mut *conn)
        .await
    {
        Ok(_) => Ok(Silence::Ended),
        // undefined_object: a server older than the setting.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42704") => {
            Ok(Silence::KeptAlive)
        }
        Err(e) => Err(e),
    }
}

impl Lead {
    /// Whether the lead is still this session's: false once the session
    /// is gone or does not answer within the silence it was given.
    pub async fn still_held(&mut self) -> bool {
        // A session lock goes only with an unlock (never sent) or the
        // session's end: a session that answers still holds it.
        let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut self.conn);
        super::within(SILENCE, ping).await.is_ok()
    }

    /// Lets go of the lead (a stop), ending the session.
    pub async fn release(self) {
        let _ = self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn one_session_holds_the_lead_until_it_ends(db: PgPool) {
        let (mut first, silence) = try_take(&db).await.unwrap().expect("a free lead");
        assert_eq!(silence, Silence::Ended, "PostgreSQL 14 or later");
        assert!(first.still_held().await);
        assert!(try_take(&db).await.unwrap().is_none(), "held once");

        // The holder's session ends (as when its process dies): the next
        // try takes it.
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut first.conn)
            .await
            .unwrap();
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&db)
            .await
            .unwrap();
        assert!(ended);
        assert!(!first.still_held().await, "a lost session is no lead");
        let (second, _) = loop {
            if let Some(taken) = try_take(&db).await.unwrap() {
                break taken;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        second.release().await;
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_silent_holder_loses_the_lead_to_the_server(db: PgPool) {
        let (lead, _) = try_take(&db).await.unwrap().expect("a free lead");
        // Frozen: the connection stays open and says nothing.
        let started = std::time::Instant::now();
        let (next, _) = loop {
            if let Some(taken) = try_take(&db).await.unwrap() {
                break taken;
            }
            assert!(
                started.elapsed() < SILENCE * 3,
                "the server kept a silent session's lead"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(started.elapsed() >= SILENCE - Duration::from_millis(500));
        drop(lead);
        next.release().await;
    }
}
