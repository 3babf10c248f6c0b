//! The quarantine: `state_dir/quarantine/aa/bb/<sha256>`, one file per
//! distinct sample, mode 0440 in 0750 directories, synced before the
//! database is told about it. Samples are never executable.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::spool::{Content, SpoolFile};

pub fn path_for(root: &Path, sha256: &str) -> PathBuf {
    root.join(&sha256[0..2]).join(&sha256[2..4]).join(sha256)
}

/// Puts a received sample in place, or drops it if the same bytes are
/// already stored. A sample held in memory is first written to a new file
/// in `spool_dir` (on the quarantine's filesystem, so the move is a
/// rename). Returns the stored path.
pub fn store(root: &Path, spool_dir: &Path, sha256: &str, content: Content) -> io::Result<PathBuf> {
    let target = path_for(root, sha256);
    let dir = target.parent().unwrap_or(root);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)?;
    if target.exists() {
        // Deduplicated: a spool file is removed when `content` drops.
        return Ok(target);
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
    fs::File::open(dir)?.sync_all()?;
    Ok(target)
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
