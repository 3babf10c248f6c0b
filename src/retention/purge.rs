//! Purging one sample's bytes, for retention and on request. The row is
//! marked first (`content_purged`, committed with the purge's audit row),
//! then the bytes are deleted, so the database never claims bytes that are
//! gone; a crash between the two leaves bytes no kept sample names, which
//! the sweep for leftovers removes (`intake::leftovers`).
//!
//! Against submissions of the same bytes: the mark takes the sample's row
//! `FOR UPDATE`, which waits for every submission statement naming the
//! sample (each holds the row `FOR KEY SHARE` to its commit,
//! `intake::record`) and holds back new ones until the mark commits. So
//! the jobs a submission made are seen (a sample with a job waiting or
//! running is not purged), a submission that found the bytes stored and
//! kept no copy of its own sees the mark and is refused (the client sends
//! the bytes again), and one that stored its own copy sets the mark back;
//! the deletion itself holds the row again (`intake::purged`).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::analyses::status::{audit, Actor};
use crate::storage::SampleStore;

/// The audit event of a purge.
pub const EVENT: &str = "sample_content_purged";

/// What a purge found.
#[derive(Debug, PartialEq)]
pub enum Purged {
    /// Marked and deleted now; the audit row is on `analysis`.
    Now {
        purged_at: DateTime<Utc>,
        analysis: Uuid,
    },
    /// Purged before: nothing done.
    Already { purged_at: Option<DateTime<Utc>> },
}

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("no sample {0}")]
    Unknown(String),
    #[error("sample {sha256} still has jobs waiting or running: {}", list(.jobs))]
    InUse { sha256: String, jobs: Vec<Uuid> },
    #[error("{0}")]
    Database(#[from] sqlx::Error),
}

fn list(jobs: &[Uuid]) -> String {
    jobs.iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Jobs that still read a sample's bytes: any but webhooks, until they end.
const LIVE_JOBS: &str = "SELECT j.id FROM jobs j JOIN analyses a ON a.id = j.analysis_id
     WHERE a.sample_sha256 = $1 AND j.kind <> 'webhook'
       AND j.state IN ('available', 'scheduled', 'running', 'retryable')
     ORDER BY j.id LIMIT 10";

/// Purges the bytes of `sha256` from `store`:
/// the mark and its audit row (`actor`; `details` say why) in one
/// transaction, then the bytes (`intake::purged`).
pub async fn purge(
    db: &PgPool,
    store: &SampleStore,
    sha256: &str,
    actor: &Actor<'_>,
    details: Value,
) -> Result<Purged, PurgeError> {
    let mut tx = db.begin().await?;
    let row: Option<(bool, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT content_purged, purged_at FROM samples WHERE sha256 = $1 FOR UPDATE",
    )
    .bind(sha256)
    .fetch_optional(&mut *tx)
    .await?;
    match row {
        None => return Err(PurgeError::Unknown(sha256.to_string())),
        Some((true, purged_at)) => return Ok(Purged::Already { purged_at }),
        Some((false, _)) => {}
    }
    let jobs: Vec<Uuid> = sqlx::query_scalar(LIVE_JOBS)
        .bind(sha256)
        .fetch_all(&mut *tx)
        .await?;
    if !jobs.is_empty() {
        return Err(PurgeError::InUse {
            sha256: sha256.to_string(),
            jobs,
        });
    }
    // The audit trail is per analysis: the purge goes on the newest, as a
    // download does.
    let analysis: Uuid = sqlx::query_scalar(
        "SELECT id FROM analyses WHERE sample_sha256 = $1
          ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(sha256)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| PurgeError::Unknown(sha256.to_string()))?;
    let purged_at: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE samples SET content_purged = true, purged_at = now()
          WHERE sha256 = $1 RETURNING purged_at",
    )
    .bind(sha256)
    .fetch_one(&mut *tx)
    .await?;
    let mut details = details;
    details["sha256"] = json!(sha256);
    audit(&mut tx, analysis, actor, EVENT, details).await?;
    tx.commit().await?;

    // Marked: what follows may fail or never happen (a crash) without the
    // row saying anything untrue; the sweep for leftovers finishes it.
    if let Err(e) = crate::intake::purged::delete(db, store, sha256, None).await {
        tracing::warn!(sha256, error = %e, "a purged sample's bytes are not deleted yet; the sweep for leftovers removes them");
    }
    tracing::info!(sha256, analysis_id = %analysis, actor = actor.name, "sample content purged");
    Ok(Purged::Now {
        purged_at,
        analysis,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn store(root: &Path) -> SampleStore {
        SampleStore::local_at(
            root.to_path_buf(),
            root.join("spool"),
            crate::storage::Meter::default(),
        )
    }

    /// A sample with one analysis, its bytes in a quarantine of its own,
    /// and one detonation job waiting.
    async fn sample(db: &PgPool, root: &Path) -> (String, Uuid, Uuid) {
        let sha = "ab".repeat(32);
        let path = crate::storage::local::path_for(root, &sha);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"bytes").unwrap();
        sqlx::query(
            "INSERT INTO samples (sha256, sha1, md5, size, file_type, storage_path)
             VALUES ($1, repeat('b', 40), repeat('c', 32), 5, 'data', 'x')",
        )
        .bind(&sha)
        .execute(db)
        .await
        .unwrap();
        let analysis = Uuid::now_v7();
        sqlx::query("INSERT INTO analyses (id, sample_sha256) VALUES ($1, $2)")
            .bind(analysis)
            .bind(&sha)
            .execute(db)
            .await
            .unwrap();
        let job = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO jobs (id, queue, kind, analysis_id) VALUES ($1, 'analysis', 'detonate', $2)",
        )
        .bind(job)
        .bind(analysis)
        .execute(db)
        .await
        .unwrap();
        (sha, analysis, job)
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_purge_marks_then_deletes_and_keeps_the_trail(db: PgPool) {
        let root = std::env::temp_dir().join(format!("sandgnat-purge-{}", Uuid::now_v7()));
        let (sha, analysis, job) = sample(&db, &root).await;
        let actor = Actor {
            name: "key:admin",
            request_id: Some("req-1"),
        };
        let why = || json!({ "reason": "request" });

        // A job waiting for the bytes keeps them.
        match purge(&db, &store(&root), &sha, &actor, why()).await {
            Err(PurgeError::InUse { jobs, .. }) => assert_eq!(jobs, [job]),
            other => panic!("{other:?}"),
        }
        let path = crate::storage::local::path_for(&root, &sha);
        assert!(path.exists());

        sqlx::query("UPDATE jobs SET state = 'completed', finished_at = now()")
            .execute(&db)
            .await
            .unwrap();
        let Purged::Now { analysis: on, .. } = purge(&db, &store(&root), &sha, &actor, why())
            .await
            .unwrap()
        else {
            panic!("not purged now")
        };
        assert_eq!(on, analysis);
        assert!(!path.exists(), "the bytes are gone");
        let (purged, at): (bool, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT content_purged, purged_at FROM samples WHERE sha256 = $1")
                .bind(&sha)
                .fetch_one(&db)
                .await
                .unwrap();
        assert!(purged && at.is_some());
        let trail: Vec<(String, String, Value, Option<String>)> = sqlx::query_as(
            "SELECT actor, event, details, request_id FROM analysis_audit_log WHERE analysis_id = $1",
        )
        .bind(analysis)
        .fetch_all(&db)
        .await
        .unwrap();
        assert_eq!(
            trail,
            [(
                "key:admin".to_string(),
                EVENT.to_string(),
                json!({ "reason": "request", "sha256": sha }),
                Some("req-1".to_string())
            )]
        );

        // Again: nothing more, not even an audit row.
        assert_eq!(
            purge(&db, &store(&root), &sha, &actor, why())
                .await
                .unwrap(),
            Purged::Already { purged_at: at }
        );
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM analysis_audit_log")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(rows, 1);
        assert!(matches!(
            purge(&db, &store(&root), &"cd".repeat(32), &actor, why()).await,
            Err(PurgeError::Unknown(_))
        ));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn retention_purges_only_what_is_old_and_unused(db: PgPool) {
        let root = std::env::temp_dir().join(format!("sandgnat-retain-{}", Uuid::now_v7()));
        let (sha, _, _) = sample(&db, &root).await;
        let days = crate::config::Retention {
            sample_days: 2,
            interval: 60,
        };
        sqlx::query("UPDATE samples SET last_seen = now() - interval '3 days'")
            .execute(&db)
            .await
            .unwrap();
        // Old, but its job still waits.
        let pass = crate::retention::pass(&db, &days, &store(&root))
            .await
            .unwrap();
        assert_eq!(pass, crate::retention::Pass::default());
        sqlx::query("UPDATE jobs SET state = 'cancelled', finished_at = now()")
            .execute(&db)
            .await
            .unwrap();
        // Off: nothing, however old.
        let off = crate::config::Retention {
            sample_days: 0,
            ..days.clone()
        };
        assert_eq!(
            crate::retention::pass(&db, &off, &store(&root))
                .await
                .unwrap(),
            crate::retention::Pass::default()
        );
        let pass = crate::retention::pass(&db, &days, &store(&root))
            .await
            .unwrap();
        assert_eq!(pass.purged, 1);
        assert!(!crate::storage::local::path_for(&root, &sha).exists());
        let actor: String = sqlx::query_scalar(
            "SELECT actor FROM analysis_audit_log WHERE event = 'sample_content_purged'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(actor, "sandgnat");
        // Once.
        let again = crate::retention::pass(&db, &days, &store(&root))
            .await
            .unwrap();
        assert_eq!(again, crate::retention::Pass::default());
        let _ = std::fs::remove_dir_all(&root);
    }
}
