//! Files a crash leaves behind, and their removal. A worker killed mid-
//! upload leaves its spool file (the guard that removes it never runs); a
//! crash between a sample's rename into the quarantine and its commit
//! leaves a quarantine file that no sample names, and a purge that dies
//! before deleting a sample's bytes, or that ran on another node, leaves
//! a file that only a purged sample names. The recorder sweeps them all
//! at start and every `intake.leftover_sweep_interval`, removing what has
//! been untouched for `intake.leftover_age` (the bytes of a sample purged
//! that long ago, however recently touched, unless stored again since
//! the purge: `intake::purged`), and counts them in the scoreboard
//! (`sandgnat_leftovers_removed_total{kind}`).
//!
//! A quarantine file is also the dedup target of later submissions of the
//! same bytes, which commit without writing it again: the local store
//! (`storage::local`) touches it (its access time) when it finds it,
//! before the commit. So a file that is about to be named was touched
//! lately, and the sweeper moves a candidate aside (an atomic rename that
//! a later `store` sees as absent, and so stores its own copy), then
//! checks its times and the database again before removing it, putting
//! it back when either says it is in use.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::PgPool;

use crate::scoreboard::Scoreboard;
use crate::storage::is_sha256;

const SPOOL: usize = 0;
const QUARANTINE: usize = 1;

/// What one sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub spool: u64,
    pub quarantine: u64,
}

/// Sweeps now, then every `every`, for as long as the process runs.
pub async fn run(
    db: PgPool,
    board: Arc<Scoreboard>,
    quarantine: PathBuf,
    spool: PathBuf,
    age: Duration,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match sweep(&db, &quarantine, &spool, age).await {
            Ok(s) => {
                let h = board.header();
                h.leftovers_removed[SPOOL].fetch_add(s.spool, Relaxed);
                h.leftovers_removed[QUARANTINE].fetch_add(s.quarantine, Relaxed);
                if s != Swept::default() {
                    tracing::info!(
                        spool = s.spool,
                        quarantine = s.quarantine,
                        "removed files left behind by a crash"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "sweep for leftovers failed; retrying at the next one")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("cannot read the state directory: {0}")]
    Io(#[from] io::Error),
    #[error("cannot ask the database which samples exist: {0}")]
    Database(#[from] sqlx::Error),
}

/// One sweep of both directories.
pub async fn sweep(
    db: &PgPool,
    quarantine: &Path,
    spool: &Path,
    age: Duration,
) -> Result<Swept, SweepError> {
    let mut swept = Swept::default();
    // This node's own disk, whatever the backend.
    let local = crate::storage::SampleStore::local_at(
        quarantine.to_path_buf(),
        spool.to_path_buf(),
        crate::storage::Meter::default(),
    );
    restore_set_aside(quarantine)?;
    // The job runners' copies of remote samples (`storage::fetch_dir`,
    // beside the spool) count as spool files.
    let mut spooled = old_files(spool, age)?;
    spooled.extend(old_files(
        &spool.with_file_name(crate::storage::FETCH_DIR),
        age,
    )?);
    for path in spooled {
        if remove(&path) {
            swept.spool += 1;
        }
    }
    for dir in sample_dirs(quarantine)? {
        let files: Vec<(PathBuf, String)> = files(&dir)?
            .into_iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.to_string();
                is_sha256(&name).then_some((p, name))
            })
            .collect();
        if files.is_empty() {
            continue;
        }
        let names: Vec<String> = files.iter().map(|(_, n)| n.clone()).collect();
        let states = states(db, &names, age).await?;
        for (path, sha) in files {
            match states.get(&sha) {
                Some(State::Kept | State::PurgedLately) => continue,
                Some(State::PurgedLongAgo) => {
                    // However lately touched (each submission of the bytes
                    // touches it, and is refused): deleted as the purge
                    // would have, with the row held, unless a submission
                    // stored it again since the purge and has yet to commit.
                    if super::purged::delete(db, &local, &sha, Some(age)).await? {
                        swept.quarantine += 1;
                    }
                    continue;
                }
                None if !is_idle(&path, age) => continue,
                None => {}
            }
            let aside = quarantine.join(format!(".leftover-{sha}"));
            if fs::rename(&path, &aside).is_err() {
                continue;
            }
            let in_use = match recorded(db, std::slice::from_ref(&sha)).await {
                Ok(named) => !named.is_empty() || !is_idle(&aside, age),
                Err(e) => {
                    let _ = fs::rename(&aside, &path);
                    return Err(e.into());
                }
            };
            if in_use {
                // A `store` that found it absent meanwhile put its own
                // copy of the same bytes there; either is the sample.
                let _ = fs::rename(&aside, &path);
            } else if remove(&aside) {
                swept.quarantine += 1;
            }
        }
    }
    Ok(swept)
}

/// What the database says of a quarantine file's sample.
pub(super) enum State {
    /// Recorded, bytes kept.
    Kept,
    /// Purged less than `intake.leftover_age` ago: its purge deleted the
    /// bytes, or a submission that stored them again has yet to commit.
    PurgedLately,
    /// Purged longer ago: any copy left is a leftover (a purge that died
    /// before deleting, or that ran on another node), but for one that a
    /// submission stored again since and has yet to commit
    /// (`intake::purged`).
    PurgedLongAgo,
}

pub(super) async fn states(
    db: &PgPool,
    shas: &[String],
    age: Duration,
) -> Result<std::collections::HashMap<String, State>, sqlx::Error> {
    let rows: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT sha256, content_purged,
                content_purged AND coalesce(purged_at < now() - make_interval(secs => $2), true)
           FROM samples WHERE sha256 = ANY($1)",
    )
    .bind(shas)
    .bind(age.as_secs_f64())
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(sha, purged, long_ago)| {
            let state = match (purged, long_ago) {
                (false, _) => State::Kept,
                (true, false) => State::PurgedLately,
                (true, true) => State::PurgedLongAgo,
            };
            (sha, state)
        })
        .collect())
}

/// Puts back what a sweep that died midway had moved aside, so this
/// sweep judges it afresh.
fn restore_set_aside(quarantine: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(quarantine) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(sha) = name.to_str().and_then(|n| n.strip_prefix(".leftover-")) else {
            continue;
        };
        if is_sha256(sha) {
            let home = crate::storage::local::path_for(quarantine, sha);
            let _ = fs::rename(e.path(), home);
        }
    }
    Ok(())
}

/// Which of `shas` a committed sample names.
pub(super) async fn recorded(db: &PgPool, shas: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT sha256 FROM samples WHERE sha256 = ANY($1)")
        .bind(shas)
        .fetch_all(db)
        .await
}

/// `quarantine/aa/bb/` directories.
fn sample_dirs(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for a in subdirs(root)? {
        out.extend(subdirs(&a)?);
    }
    Ok(out)
}

fn subdirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| e.file_name().len() == 2)
            .map(|e| e.path())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Regular files directly in `dir`.
fn files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Regular files directly in `dir` untouched for at least `age`.
fn old_files(dir: &Path, age: Duration) -> io::Result<Vec<PathBuf>> {
    Ok(files(dir)?.into_iter().filter(|p| is_old(p, age)).collect())
}

/// Written at least `age` ago.
fn is_old(path: &Path, age: Duration) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| older(t, age))
}

/// Neither written nor touched (`storage::local`: a submission that finds
/// a quarantine file sets its access time) for `age`.
fn is_idle(path: &Path, age: Duration) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| {
        let written = m.modified().is_ok_and(|t| older(t, age));
        let touched = m.accessed().is_ok_and(|t| older(t, age));
        written && touched
    })
}

fn older(t: SystemTime, age: Duration) -> bool {
    SystemTime::now()
        .duration_since(t)
        .is_ok_and(|idle| idle >= age)
}

fn remove(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => true,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover file");
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn only_unnamed_or_spooled_files_are_removed(db: PgPool) {
        let d = std::env::temp_dir().join(format!("sandgnat-leftovers-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let (q, spool) = (d.join("quarantine"), d.join("spool"));
        fs::create_dir_all(&spool).unwrap();
        let named = "a".repeat(64);
        let stray = format!("ab{}", "c".repeat(62));
        let (purged, lately) = ("d".repeat(64), "e".repeat(64));
        for sha in [&named, &stray, &purged, &lately] {
            let p = crate::storage::local::path_for(&q, sha);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, b"x").unwrap();
        }
        fs::write(spool.join("upload-1"), b"partial").unwrap();
        // The copy a purge left was written before it, and a submission of
        // the bytes found it just now (and was refused).
        written_ago(&crate::storage::local::path_for(&q, &purged), 3 * 3600);
        let found = crate::storage::local::Quarantine::at(q.clone(), spool.clone())
            .store(
                &purged,
                &crate::storage::Source::Memory(b"x".to_vec().into()),
            )
            .unwrap();
        assert!(!found.wrote);
        // A recorded sample a dead sweep had moved aside comes back.
        fs::rename(
            crate::storage::local::path_for(&q, &named),
            q.join(format!(".leftover-{named}")),
        )
        .unwrap();
        // Recorded, kept; purged two hours ago (a copy a purge left,
        // touched just now by a submission of the bytes); purged a minute
        // ago (its purge's own deletion may be under way).
        for (sha, purged_at) in [
            (&named, None),
            (&purged, Some("2 hours")),
            (&lately, Some("1 minute")),
        ] {
            sqlx::query(
                "INSERT INTO samples (sha256, sha1, md5, size, file_type, storage_path,
                                      content_purged, purged_at)
                 VALUES ($1, repeat('1', 40), repeat('5', 32), 1, 'data', 'x',
                         $2::text IS NOT NULL, now() - $2::interval)",
            )
            .bind(sha)
            .bind(purged_at)
            .execute(&db)
            .await
            .unwrap();
        }

        // Too young: nothing goes, but the copy of the sample purged long
        // ago, however fresh.
        let s = sweep(&db, &q, &spool, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(
            s,
            Swept {
                spool: 0,
                quarantine: 1
            }
        );
        assert!(!crate::storage::local::path_for(&q, &purged).exists());
        assert!(crate::storage::local::path_for(&q, &lately).exists());

        let s = sweep(&db, &q, &spool, Duration::ZERO).await.unwrap();
        assert_eq!(
            s,
            Swept {
                spool: 1,
                quarantine: 2
            }
        );
        assert!(crate::storage::local::path_for(&q, &named).exists());
        assert!(!crate::storage::local::path_for(&q, &stray).exists());
        assert!(!crate::storage::local::path_for(&q, &lately).exists());
        assert_eq!(fs::read_dir(&spool).unwrap().count(), 0);
        assert!(!q.join(format!(".leftover-{stray}")).exists());
        fs::remove_dir_all(&d).unwrap();
    }

    /// Sets a file's modification time `secs` in the past.
    fn written_ago(path: &Path, secs: u64) {
        let then = SystemTime::now() - Duration::from_secs(secs);
        let times = fs::FileTimes::new().set_modified(then).set_accessed(then);
        fs::File::open(path).unwrap().set_times(times).unwrap();
    }

    /// A sample purged long ago whose bytes a new submission stores
    /// again: until that submission commits (and clears the mark), only
    /// the file holds its bytes, and the sweep must leave it.
    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_copy_stored_again_after_a_purge_is_left_to_its_submission(db: PgPool) {
        let d =
            std::env::temp_dir().join(format!("sandgnat-leftovers-again-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let (q, spool) = (d.join("quarantine"), d.join("spool"));
        fs::create_dir_all(&spool).unwrap();
        let sha = "f".repeat(64);
        sqlx::query(
            "INSERT INTO samples (sha256, sha1, md5, size, file_type, storage_path,
                                  content_purged, purged_at)
             VALUES ($1, repeat('1', 40), repeat('5', 32), 5, 'data', 'x',
                     true, now() - interval '2 hours')",
        )
        .bind(&sha)
        .execute(&db)
        .await
        .unwrap();
        let upload = spool.join("upload-2");
        fs::write(&upload, b"bytes").unwrap();
        let source = crate::storage::Source::File(crate::storage::SpoolFile::new(upload));
        let stored = crate::storage::local::Quarantine::at(q.clone(), spool.clone())
            .store(&sha, &source)
            .unwrap();
        assert!(stored.wrote, "no copy was left: the submission writes one");

        let s = sweep(&db, &q, &spool, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(s, Swept::default());
        assert_eq!(fs::read(&stored.path).unwrap(), b"bytes");

        // Its submission commits: the sample is kept, with its bytes.
        sqlx::query("UPDATE samples SET content_purged = false, purged_at = NULL")
            .execute(&db)
            .await
            .unwrap();
        let s = sweep(&db, &q, &spool, Duration::ZERO).await.unwrap();
        assert_eq!(s, Swept::default());
        assert!(stored.path.exists());

        // Had it never committed (the worker died), the copy is a leftover
        // once `intake.leftover_age` has passed since it was written.
        sqlx::query(
            "UPDATE samples SET content_purged = true, purged_at = now() - interval '2 hours'",
        )
        .execute(&db)
        .await
        .unwrap();
        let s = sweep(&db, &q, &spool, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(s.quarantine, 0);
        written_ago(&stored.path, 3600);
        let s = sweep(&db, &q, &spool, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(s.quarantine, 1);
        assert!(!stored.path.exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
