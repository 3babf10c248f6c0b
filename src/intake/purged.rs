//! Deleting the bytes of a purged sample, fenced by the sample's row: the
//! row is held `FOR UPDATE` while the bytes go, so no submission of them
//! commits meanwhile (each holds the row `FOR KEY SHARE`, `record`), and
//! they go only if the row still says purged: a submission that stored
//! them again, and committed first, keeps them. Used by the purge itself
//! (`crate::retention::purge`, right after the mark) and by the sweep for
//! leftovers, for the copies a purge did not delete (it died first, or
//! ran on another node).
//!
//! A submission finds a sample's bytes absent only once they are deleted,
//! and then stores its own copy; only a second deletion could take that
//! copy before its commit sets the mark back. The purge deletes once,
//! right after its mark; the sweep deletes only what was purged
//! `intake.leftover_age` ago, long after the purge's own deletion.

use sqlx::PgPool;

use crate::storage::SampleStore;

/// Deletes the bytes of `sha256` if the sample is still marked purged;
/// whether there were any.
pub async fn delete(db: &PgPool, store: &SampleStore, sha256: &str) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let purged: Option<bool> =
        sqlx::query_scalar("SELECT content_purged FROM samples WHERE sha256 = $1 FOR UPDATE")
            .bind(sha256)
            .fetch_optional(&mut *tx)
            .await?;
    let mut deleted = false;
    if purged == Some(true) {
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
