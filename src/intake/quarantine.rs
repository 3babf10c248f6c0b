//! The quarantine: `state_dir/quarantine/aa/bb/<sha256>`, one file per
//! distinct sample, mode 0440 in 0750 directories, synced before the
//! database is told about it. Samples are never executable.
//!
//! "Synced" covers the whole path: a rename into a directory that was
//! itself just made is lost in a crash unless the new directory's entry in
//! its parent is synced too, so every directory made on the way is synced
//! to its parent before the sample's own directory is.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::spool::{Content, SpoolFile};
use crate::config::Settings;

/// Where the quarantine lives: below the state directory.
pub fn quarantine_dir(settings: &Settings) -> PathBuf {
    settings.paths.state_dir.join("quarantine")
}

/// Whether `s` names a sample as the quarantine does: a SHA-256 in 64
/// lowercase hex digits. Anything that builds a path from a hash it did
/// not compute itself checks it with this first.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn path_for(root: &Path, sha256: &str) -> PathBuf {
    root.join(&sha256[0..2]).join(&sha256[2..4]).join(sha256)
}

/// Puts a received sample in place, or drops it if the same bytes are
/// already stored. A sample held in memory is first written to a new file
/// in `spool_dir` (on the quarantine's filesystem, so the move is a
/// rename).
pub fn store(root: &Path, spool_dir: &Path, sha256: &str, content: Content) -> io::Result<Stored> {
    store_synced(root, spool_dir, sha256, content).map(|(stored, _)| stored)
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

/// [`store`], also saying every directory it synced, in the order synced.
fn store_synced(
    root: &Path,
    spool_dir: &Path,
    sha256: &str,
    content: Content,
) -> io::Result<(Stored, Vec<PathBuf>)> {
    let target = path_for(root, sha256);
    let dir = target.parent().unwrap_or(root).to_path_buf();
    let mut synced = make_dirs(&dir)?;
    // Deduplicated: a spool file is removed when `content` drops. The
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
    let spooled = match content {
        Content::File(f) => f,
        Content::Memory(held) => write_spool(spool_dir, held.as_slice())?,
    };
    // Durable before it has a name in the quarantine, and so before the
    // database is told (a delayed allocation's ENOSPC surfaces here: 507).
    fs::File::open(spooled.path())?.sync_all()?;
    fs::set_permissions(spooled.path(), fs::Permissions::from_mode(0o440))?;
    fs::rename(spooled.path(), &target)?;
    spooled.disarm();
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
            Ok(()) => {}
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
    if !is_sha256(sha256) {
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

fn touch(path: &Path) -> io::Result<()> {
    fs::File::open(path)?.set_modified(std::time::SystemTime::now())
}

fn write_spool(spool_dir: &Path, bytes: &[u8]) -> io::Result<SpoolFile> {
    let path = spool_dir.join(format!("store-{:032x}", rand::random::<u128>()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let guard = SpoolFile::new(path);
    file.write_all(bytes)?;
    Ok(guard)
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

    fn spooled(spool: &Path, bytes: &[u8]) -> Content {
        Content::File(write_spool(spool, bytes).unwrap())
    }

    #[test]
    fn new_directories_are_synced_to_their_parents_before_the_file_is_named() {
        let d = scratch("dirs");
        let root = d.join("quarantine");
        fs::create_dir(&root).unwrap();
        let spool = d.join("spool");
        let a = format!("abcd{}", "0".repeat(60));
        let (s, synced) = store_synced(&root, &spool, &a, spooled(&spool, b"one")).unwrap();
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
        let (_, synced) = store_synced(&root, &spool, &b, spooled(&spool, b"two")).unwrap();
        assert_eq!(synced, vec![root.join("ab"), root.join("ab/ef")]);

        // A duplicate makes nothing and names nothing new.
        let (s, synced) = store_synced(&root, &spool, &b, spooled(&spool, b"two")).unwrap();
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
