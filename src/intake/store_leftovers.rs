//! Objects of the shared bucket (`storage.backend = "s3"`) that no kept
//! sample names: an upload whose commit then failed (the database, or
//! the node, went away after the object was written and before the 202),
//! or a purge whose deletion failed (the store was away). Every node
//! writes the bucket, so this sweep is work that runs once across the
//! cluster (`crate::duties`, every `intake.leftover_sweep_interval`),
//! counted as `sandgnat_leftovers_removed_total{kind="store"}` by the
//! node whose lead removed them. The per-node sweep (`intake::leftovers`)
//! looks after the node's own disk.
//!
//! Which objects: those at a content address written more than
//! `intake.leftover_age` ago (by the listing's time) whose sample is not
//! recorded, or was purged that long ago. A fresh object is never moved:
//! it may be an upload whose commit is under way.
//!
//! S3 has no rename, and no delete that waits for what a submission is
//! doing at the same moment: a submission may find an object stored (or
//! store the same bytes again) just before the sweep deletes it, and
//! commit just after. So the sweep never deletes an object at its
//! content address outright. It moves it aside (`leftovers/<sha256>`,
//! `storage::s3`), looks at the database again at once, and on every
//! pass copies back any object set aside that a kept sample names while
//! its own object is missing; an object set aside is dropped only once
//! `intake.leftover_age` has passed since and no kept sample needs it.
//! A submission that relied on it is restored within the pass if it
//! committed meanwhile, else within one interval of its commit; until
//! then a read of it fails and is retried (the runner's job, the bridge).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use sqlx::PgPool;

use super::leftovers::{states, State};
use crate::storage::s3::{Bucket, Kind};
use crate::storage::{SampleStore, StoreError};

/// Sample objects judged per database query.
const CHUNK: usize = 500;

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Moved aside from their content address.
    pub set_aside: u64,
    /// Copied back: a kept sample named them after all.
    pub restored: u64,
    /// Dropped from the bucket for good.
    pub removed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot ask the database which samples exist: {0}")]
    Database(#[from] sqlx::Error),
}

/// One sweep of the bucket; nothing to do for a local store.
pub async fn sweep(db: &PgPool, store: &SampleStore, age: Duration) -> Result<Swept, SweepError> {
    let Some(bucket) = store.bucket() else {
        return Ok(Swept::default());
    };
    let cutoff = Utc::now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    let mut swept = Swept::default();
    let mut old: Vec<String> = Vec::new();
    let mut aside: Vec<(String, DateTime<Utc>)> = Vec::new();
    let mut listing = bucket.listing();
    while let Some(listed) = listing.next().await {
        let listed = listed?;
        match listed.what {
            Kind::Sample(sha) if listed.modified < cutoff => old.push(sha),
            Kind::Sample(_) => {}
            Kind::Aside(sha) => aside.push((sha, listed.modified)),
        }
        if old.len() >= CHUNK {
            set_aside(
                db,
                store,
                bucket,
                &std::mem::take(&mut old),
                age,
                &mut swept,
            )
            .await?;
        }
    }
    set_aside(db, store, bucket, &old, age, &mut swept).await?;

    // What was set aside before this pass: back where a kept sample
    // needs it, dropped once old and needed by none.
    let shas: Vec<String> = aside.iter().map(|(s, _)| s.clone()).collect();
    let kept = kept(db, &shas).await?;
    for (sha, modified) in aside {
        if kept.contains(&sha) {
            restore_if_missing(store, bucket, &sha, &mut swept).await?;
        } else if modified >= cutoff {
            continue;
        }
        let dropped = bucket.drop_aside(&sha).await;
        store.count_delete(&dropped);
        match dropped {
            Ok(()) if !kept.contains(&sha) => swept.removed += 1,
            Ok(()) | Err(StoreError::Missing) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(swept)
}

/// Moves aside those of `old` (sample objects written long ago) that no
/// kept sample names, then copies back any that one names now.
async fn set_aside(
    db: &PgPool,
    store: &SampleStore,
    bucket: &Bucket,
    old: &[String],
    age: Duration,
    swept: &mut Swept,
) -> Result<(), SweepError> {
    if old.is_empty() {
        return Ok(());
    }
    let states = states(db, old, age).await?;
    let mut moved = Vec::new();
    for sha in old {
        match states.get(sha) {
            Some(State::Kept | State::PurgedLately) => continue,
            Some(State::PurgedLongAgo) | None => {}
        }
        let result = bucket.set_aside(sha).await;
        store.count_delete(&result);
        match result {
            Ok(()) => moved.push(sha.clone()),
            Err(StoreError::Missing) => {}
            Err(e) => return Err(e.into()),
        }
    }
    swept.set_aside += moved.len() as u64;
    // A submission that found one of them stored, or stored the same
    // bytes again, and committed meanwhile.
    let kept = kept(db, &moved).await?;
    for sha in moved.iter().filter(|s| kept.contains(*s)) {
        restore_if_missing(store, bucket, sha, swept).await?;
    }
    Ok(())
}

async fn restore_if_missing(
    store: &SampleStore,
    bucket: &Bucket,
    sha: &str,
    swept: &mut Swept,
) -> Result<(), SweepError> {
    if store.contains(sha).await? {
        return Ok(());
    }
    bucket.restore(sha).await?;
    swept.restored += 1;
    tracing::warn!(
        sha256 = sha,
        "a sample's object set aside as a leftover was named by a submission meanwhile; copied back"
    );
    Ok(())
}

/// Which of `shas` a sample names whose bytes are kept.
async fn kept(db: &PgPool, shas: &[String]) -> Result<HashSet<String>, sqlx::Error> {
    if shas.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT sha256 FROM samples WHERE sha256 = ANY($1) AND NOT content_purged",
    )
    .bind(shas)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}
