//! The local backend, the quarantine: `state_dir/quarantine/aa/bb/<sha256>`,
//! one file per distinct sample, mode 0440 in 0750 directories, synced
//! before the database is told about it. Samples are never executable.
//!
//! "Synced" covers the whole path: a rename into a directory that was
//! itself just made is lost in a crash unless the new directory's entry in
//! its parent is synced too, so every directory made on the way is synced
//! to its parent before the sample's own directory is.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use super::{Object, Source, SpoolFile, StoreError};
use crate::config::Settings;

/// Where the quarantine lives: below the state directory.
pub fn quarantine_dir(settings: &Settings) -> PathBuf {
    settings.paths.state_dir.join("quarantine")
}

/// The quarantine's path for a sample; `sha256` must have passed
/// `storage::is_sha256`.
pub fn path_for(root: &Path, sha256: &str) -> PathBuf {
    root.join(super::address(sha256))
}

/// Chunks a stored sample is read in.
const CHUNK: usize = 256 << 10;

/// The quarantine and the spool beside it (on the same file system, so a
/// spooled sample is renamed in).
#[derive(Debug, Clone)]
pub struct Quarantine {
    root: PathBuf,
    spool: PathBuf,
}

impl Quarantine {
    pub fn new(settings: &Settings) -> Self {
        Quarantine {
            root: quarantine_dir(settings),
            spool: crate::storage::spool_dir(settings),
        }
    }

    pub fn at(root: PathBuf, spool: PathBuf) -> Self {
        Quarantine { root, spool }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path_for(&self, sha256: &str) -> PathBuf {
        path_for(&self.root, sha256)
    }

    /// Whether the sample is here (a regular file, not through a link).
    pub fn head(&self, sha256: &str) -> Result<(), StoreError> {
        let meta = fs::symlink_metadata(self.path_for(sha256))?;
        if meta.is_file() {
            Ok(())
        } else {
            Err(StoreError::Io(io::Error::other("not a regular file")))
        }
    }

    /// Puts a received sample in place, or drops it if the same bytes are
    /// already stored. A sample held in memory is first written to a new
    /// file in the spool. Blocking.
    pub fn store(&self, sha256: &str, source: &Source) -> io::Result<Stored> {
        store_synced(&self.root, &self.spool, sha256, source).map(|(stored, _)| stored)
    }

    /// Opens the sample (a regular file, not through a link) and streams
    /// it in chunks.
    pub async fn open(&self, sha256: &str) -> Result<Object, StoreError> {
        let path = self.path_for(sha256);
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .await?;
        let meta = file.metadata().await?;
        if !meta.is_file() {
            return Err(StoreError::Io(io::Error::other("not a regular file")));
        }
        let modified = meta
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or_default();
        let size = meta.len();
        Ok(Object {
            size,
            modified,
            body: chunks(file, size).boxed(),
        })
    }

    /// Removes the sample's file; whether there was one. Blocking.
    pub fn delete(&self, sha256: &str) -> Result<bool, StoreError> {
        Ok(remove(&self.root, sha256)?)
    }

    /// When this copy of the sample was written: its last byte, by the
    /// submission that stored it (a submission that finds it only touches
    /// its access time).
    pub fn written_at(&self, sha256: &str) -> io::Result<std::time::SystemTime> {
        fs::symlink_metadata(self.path_for(sha256))?.modified()
    }

    /// Whether a file can be made in the quarantine now.
    pub fn probe(&self) -> Result<(), StoreError> {
        let probe = self.root.join(format!(".ready-{}", std::process::id()));
        fs::write(&probe, b"").and_then(|_| fs::remove_file(&probe))?;
        Ok(())
    }
}

/// The file's first `size` bytes in chunks. A file that ends early is
/// an error, which fails the stream: a reader never takes a short sample
/// for a whole one.
fn chunks(file: tokio::fs::File, size: u64) -> impl futures_util::Stream<Item = io::Result<Bytes>> {
    futures_util::stream::unfold(Some((file, size)), |state| async move {
        let (mut file, left) = state?;
        if left == 0 {
            return None;
        }
        let want = CHUNK.min(usize::try_from(left).unwrap_or(usize::MAX));
        let mut buf = vec![0u8; want];
        match file.read(&mut buf).await {
            Ok(0) => Some((Err(io::ErrorKind::UnexpectedEof.into()), None)),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some((file, left - n as u64))))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// Where a sample is stored, and whether this submission wrote it.
#[derive(Debug)]
pub struct Stored {
    pub path: PathBuf,
    /// False when the same bytes were found stored: the submission then
    /// relies on a copy that a purge may be deleting (`intake::record`
    /// refuses it if the sample was purged meanwhile).
    pub wrote: bool,
}

/// [`Quarantine::store`], also saying every directory it synced, in the
/// order synced.
fn store_synced(
    root: &Path,
    spool_dir: &Path,
    sha256: &str,
    source: &Source,
) -> io::Result<(Stored, Vec<PathBuf>)> {
    let target = path_for(root, sha256);
    let dir = target.parent().unwrap_or(root).to_path_buf();
    let mut synced = make_dirs(&dir)?;
    // Deduplicated: a spool file is removed when its guard drops. The
    // file is touched first, so the sweep for leftovers (which this
    // submission's commit will make it no longer be) leaves it alone;
    // if the sweep moved it aside already, store our own copy.
    if touch(&target).is_ok() {
        let stored = Stored {
            path: target,
            wrote: false,
        };
        return Ok((stored, synced));
    }
    let written;
    let (spooled, file) = match source {
        Source::File(f) => (f, fs::File::open(f.path())?),
        Source::Memory(bytes) => {
            let (guard, file) = write_spool(spool_dir, bytes)?;
            written = guard;
            (&written, file)
        }
    };
    // The mode first, on the descriptor, so that the one sync below
    // writes the inode once with it.
    file.set_permissions(fs::Permissions::from_mode(0o440))?;
    // Durable before it has a name in the quarantine, and so before the
    // database is told (a delayed allocation's ENOSPC surfaces here: 507).
    file.sync_all()?;
    drop(file);
    fs::rename(spooled.path(), &target)?;
    spooled.moved();
    // The rename is durable only once the directory is synced.
    fs::File::open(&dir)?.sync_all()?;
    synced.push(dir);
    let stored = Stored {
        path: target,
        wrote: true,
    };
    Ok((stored, synced))
}

/// Makes `dir` and any missing parents (0750), then syncs the parent of
/// each directory that was missing, deepest first. Returns the parents
/// synced. A directory another worker made between our look and our
/// `mkdir` is synced all the same: its maker may not have synced it yet,
/// and our commit must not depend on theirs.
fn make_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d);
        at = d.parent();
    }
    let mut synced = Vec::new();
    for d in missing.iter().rev() {
        match fs::DirBuilder::new().mode(0o750).create(d) {
            // Set again: the unit's UMask=0077 takes the group's bits off
            // a new directory, and the service's group reads samples.
            Ok(()) => fs::set_permissions(d, fs::Permissions::from_mode(0o750))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    for d in &missing {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::File::open(parent)?.sync_all()?;
            synced.push(parent.to_path_buf());
        }
    }
    Ok(synced)
}

/// Deletes a sample's bytes: the one place they are deleted on purpose
/// (`crate::intake::purged`, which holds the sample's row, marked purged,
/// meanwhile). Whether there was a file; a name that is not a sha256 is
/// refused.
pub fn remove(root: &Path, sha256: &str) -> io::Result<bool> {
    if !super::is_sha256(sha256) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a sample is named by its sha256",
        ));
    }
    match fs::remove_file(path_for(root, sha256)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Marks a stored file as in use by a submission that found it: its
/// access time, which the sweep for leftovers reads as "touched". The
/// modification time stays when the bytes were written, so a copy a purge
/// left behind still looks older than the purge however often it is found.
fn touch(path: &Path) -> io::Result<()> {
    let now = fs::FileTimes::new().set_accessed(std::time::SystemTime::now());
    fs::File::open(path)?.set_times(now)
}

/// A new spool file holding `bytes`, and its open descriptor.
fn write_spool(spool_dir: &Path, bytes: &[u8]) -> io::Result<(SpoolFile, fs::File)> {
    let path = spool_dir.join(format!("store-{:032x}", rand::random::<u128>()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let guard = SpoolFile::new(path);
    file.write_all(bytes)?;
    Ok((guard, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sandgnat-quar-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("spool")).unwrap();
        d
    }

    fn spooled(spool: &Path, bytes: &[u8]) -> Source {
        Source::File(write_spool(spool, bytes).unwrap().0)
    }

    #[test]
    fn new_directories_are_synced_to_their_parents_before_the_file_is_named() {
        let d = scratch("dirs");
        let root = d.join("quarantine");
        fs::create_dir(&root).unwrap();
        let spool = d.join("spool");
        let a = format!("abcd{}", "0".repeat(60));
        let (s, synced) = store_synced(&root, &spool, &a, &spooled(&spool, b"one")).unwrap();
        assert_eq!(s.path, root.join("ab/cd").join(&a));
        assert!(s.wrote);
        // Both new directories' entries, deepest first, then the file's.
        assert_eq!(
            synced,
            vec![root.join("ab"), root.clone(), root.join("ab/cd")]
        );
        assert_eq!(fs::read(&s.path).unwrap(), b"one");
        let mode = fs::metadata(root.join("ab")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o750);

        // A sibling under an existing `ab/`: only the new `ef/` is synced
        // to `ab/`, then the file's own directory.
        let b = format!("abef{}", "1".repeat(60));
        let (_, synced) = store_synced(&root, &spool, &b, &spooled(&spool, b"two")).unwrap();
        assert_eq!(synced, vec![root.join("ab"), root.join("ab/ef")]);

        // A duplicate makes nothing and names nothing new.
        let (s, synced) = store_synced(&root, &spool, &b, &spooled(&spool, b"two")).unwrap();
        assert!(synced.is_empty(), "{synced:?}");
        assert!(!s.wrote);
        assert_eq!(fs::read_dir(&spool).unwrap().count(), 0, "spool file left");

        // Removed once; a name that is not a hash is refused.
        assert!(remove(&root, &b).unwrap());
        assert!(!s.path.exists());
        assert!(!remove(&root, &b).unwrap());
        assert!(remove(&root, "../../etc/passwd").is_err());
        fs::remove_dir_all(&d).unwrap();
    }
}
