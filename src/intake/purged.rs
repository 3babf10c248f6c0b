//! Deleting the bytes of a purged sample, fenced by the sample's row: the
//! row is held `FOR UPDATE` while the bytes go, so no submission of them
//! commits meanwhile (each holds the row `FOR KEY SHARE`, `record`), and
//! they go only if the row still says purged: a submission that stored
//! them again, and committed first, keeps them. Used by the purge itself
//! (`crate::retention::purge`, right after the mark) and by the sweep for
//! leftovers, for the copies a purge did not delete (it died first, or
//! ran on another node).
//!
//! A submission that finds a sample's bytes absent (deleted, or never on
//! this node) stores its own copy, which is not named until its commit
//! sets the mark back: a deletion in between would leave a kept sample
//! without bytes. The row does not show that copy, so the file does: its
//! modification time is when its last byte was written, by the
//! submission that stores it, and a submission that finds a copy only
//! touches its access time (`storage::local`). A local copy goes only if
//! it was written before the purge, or, for the sweep,
//! `intake.leftover_age` ago (a copy stored again whose commit never
//! came: far longer than a submission takes). The
//! S3 store keeps one copy, deleted by the purge only; its sweep never
//! deletes an object outright (`store_leftovers`).

use std::time::{Duration, SystemTime};

use sqlx::PgPool;

use crate::storage::SampleStore;

/// Deletes the bytes of `sha256` if the sample is still marked purged and
/// they are not a copy stored again since (`idle`: the sweep's
/// `intake.leftover_age`, after which such a copy whose commit never came
/// goes too); whether there were any.
pub async fn delete(
    db: &PgPool,
    store: &SampleStore,
    sha256: &str,
    idle: Option<Duration>,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    // How long ago, by the database's clock, compared below with how long
    // ago by this node's: two durations, so a skew between the clocks
    // does not count.
    let purged: Option<(bool, Option<f64>)> = sqlx::query_as(
        "SELECT content_purged, extract(epoch FROM clock_timestamp() - purged_at)::float8
           FROM samples WHERE sha256 = $1 FOR UPDATE",
    )
    .bind(sha256)
    .fetch_optional(&mut *tx)
    .await?;
    let mut deleted = false;
    let due = match purged {
        Some((true, purged_ago)) => !stored_again(store, sha256, purged_ago, idle),
        _ => false,
    };
    if due {
        match store.delete(sha256).await {
            Ok(d) => deleted = d,
            Err(e) => {
                tracing::warn!(sha256, error = %e, "cannot delete a purged sample's bytes; the sweep for leftovers tries again")
            }
        }
    }
    tx.commit().await?;
    Ok(deleted)
}

/// Whether this node's copy of a purged sample may be a submission's, not
/// yet committed: written since the purge (`purged_ago` seconds ago), and
/// not `idle` ago. Only the local quarantine keeps copies a submission
/// writes beside a purge.
fn stored_again(
    store: &SampleStore,
    sha256: &str,
    purged_ago: Option<f64>,
    idle: Option<Duration>,
) -> bool {
    let Some(quarantine) = store.local() else {
        return false;
    };
    let written = match quarantine.written_at(sha256) {
        Ok(t) => t,
        // Nothing to delete: the deletion finds nothing either.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(e) => {
            tracing::warn!(sha256, error = %e, "cannot tell when a purged sample's copy was written; keeping it");
            return true;
        }
    };
    // A time stamp ahead of the clock reads as written just now.
    let written_ago = SystemTime::now()
        .duration_since(written)
        .unwrap_or_default();
    let before_purge = purged_ago.is_some_and(|p| written_ago.as_secs_f64() > p);
    let long_ago = idle.is_some_and(|age| written_ago >= age);
    !(before_purge || long_ago)
}
