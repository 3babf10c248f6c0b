//! The quarantine: `state_dir/quarantine/aa/bb/<sha256>`, one file per
//! distinct sample, mode 0440 in 0750 directories, synced before the
//! database is told about it. Samples are never executable.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::spool::SpoolFile;

pub fn path_for(root: &Path, sha256: &str) -> PathBuf {
    root.join(&sha256[0..2]).join(&sha256[2..4]).join(sha256)
}

/// Moves a spooled sample into place, or drops it if the same bytes are
/// already stored. Returns the stored path.
pub fn store(root: &Path, sha256: &str, spooled: SpoolFile) -> io::Result<PathBuf> {
    let target = path_for(root, sha256);
    let dir = target.parent().unwrap_or(root);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)?;
    if target.exists() {
        // Deduplicated: the spool file is removed when `spooled` drops.
        return Ok(target);
    }
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
