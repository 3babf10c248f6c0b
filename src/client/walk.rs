//! What `sandgnat submit` sends: the files named, every regular file under
//! the directories named (recursively, in name order), and standard input
//! for `-`. A symbolic link found inside a directory is followed only to a
//! regular file inside the same tree, so a link planted in a sample
//! collection cannot make the client upload `/etc/shadow`; anything else
//! that is not a regular file (a FIFO that would block, a device, a link
//! out of the tree) is skipped and said.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("{path}: {why}")]
    Unreadable { path: String, why: String },
    #[error("- (standard input) is named more than once")]
    StdinTwice,
    #[error("standard input is a terminal; pipe a sample into it or name a file")]
    StdinTerminal,
    #[error("cannot keep standard input for the upload: {0}")]
    Spool(std::io::Error),
}

enum Origin {
    /// Standard input, copied to an unlinked file so that a retry can
    /// send it again and its size is known before it is sent.
    Stdin(File),
    /// `follow`: the path may end in a symbolic link (named by the user).
    Path { path: PathBuf, follow: bool },
}

/// One sample to send.
pub struct Item {
    /// The path as the user would recognise it (`-` for standard input).
    pub display: String,
    /// The file name to tell the server, if any.
    pub name: Option<String>,
    /// Size when listed, for the overall progress.
    pub size: u64,
    origin: Origin,
}

impl Item {
    /// Opens the sample at its start, as a regular file; called for each
    /// try, so a retry sends the same bytes from the beginning.
    pub fn open(&self) -> std::io::Result<File> {
        let file = match &self.origin {
            Origin::Stdin(spooled) => {
                let mut f = spooled.try_clone()?;
                f.seek(SeekFrom::Start(0))?;
                f
            }
            Origin::Path { path, follow } => {
                // Non-blocking: a FIFO swapped in since the listing must
                // not hang the open; a regular file ignores the flag.
                let mut flags = libc::O_NONBLOCK;
                if !follow {
                    flags |= libc::O_NOFOLLOW;
                }
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(flags)
                    .open(path)?
            }
        };
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(file)
    }
}

/// The list, and what was left out and why.
#[derive(Default)]
pub struct Walk {
    pub items: Vec<Item>,
    pub skipped: Vec<String>,
}

/// Lists the samples `args` name. A named path that does not exist is an
/// error (nothing is sent); things left out inside directories are in
/// `skipped`.
pub fn collect(args: &[PathBuf]) -> Result<Walk, WalkError> {
    let mut walk = Walk::default();
    let mut seen = HashSet::new();
    let mut stdin_named = false;
    for arg in args {
        if arg.as_os_str() == "-" {
            if stdin_named {
                return Err(WalkError::StdinTwice);
            }
            stdin_named = true;
            let (file, size) = spool_stdin()?;
            walk.items.push(Item {
                display: "-".into(),
                name: None,
                size,
                origin: Origin::Stdin(file),
            });
            continue;
        }
        let unreadable = |e: std::io::Error| WalkError::Unreadable {
            path: arg.display().to_string(),
            why: e.to_string(),
        };
        let meta = std::fs::metadata(arg).map_err(unreadable)?;
        if meta.is_dir() {
            let root = std::fs::canonicalize(arg).map_err(unreadable)?;
            walk_dir(arg, &root, &mut walk, &mut seen);
        } else if meta.is_file() {
            let real = std::fs::canonicalize(arg).map_err(unreadable)?;
            if seen.insert(real) {
                walk.items.push(item(arg, arg.clone(), true, meta.len()));
            }
        } else {
            walk.skipped
                .push(format!("{}: not a regular file, skipped", arg.display()));
        }
    }
    Ok(walk)
}

fn item(shown: &Path, path: PathBuf, follow: bool, size: u64) -> Item {
    Item {
        display: shown.display().to_string(),
        name: shown.file_name().map(|n| n.to_string_lossy().into_owned()),
        size,
        origin: Origin::Path { path, follow },
    }
}

fn walk_dir(dir: &Path, root: &Path, walk: &mut Walk, seen: &mut HashSet<PathBuf>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            walk.skipped.push(format!(
                "{}: cannot read the directory ({e}), skipped",
                dir.display()
            ));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let skip = |walk: &mut Walk, why: &str| {
            walk.skipped
                .push(format!("{}: {why}, skipped", path.display()));
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                skip(walk, &e.to_string());
                continue;
            }
        };
        let kind = meta.file_type();
        if kind.is_dir() {
            walk_dir(&path, root, walk, seen);
        } else if kind.is_file() {
            // A directory's entries are real paths below a canonical root
            // only if no component is a link: canonicalize to find out.
            if let Ok(real) = std::fs::canonicalize(&path) {
                if seen.insert(real) {
                    walk.items
                        .push(item(&path, path.clone(), false, meta.len()));
                }
            }
        } else if kind.is_symlink() {
            let target = std::fs::canonicalize(&path);
            match target {
                Ok(real) if !real.starts_with(root) => {
                    skip(walk, "a symbolic link out of the tree, not followed")
                }
                Ok(real) => match std::fs::symlink_metadata(&real) {
                    Ok(m) if m.is_file() => {
                        if seen.insert(real.clone()) {
                            walk.items.push(Item {
                                name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
                                ..item(&path, real, false, m.len())
                            });
                        }
                    }
                    Ok(m) if m.is_dir() => {
                        skip(walk, "a symbolic link to a directory, not followed")
                    }
                    _ => skip(walk, "a symbolic link to something not a regular file"),
                },
                Err(_) => skip(walk, "a dangling symbolic link"),
            }
        } else {
            skip(walk, "not a regular file");
        }
    }
}

/// Copies standard input to a file that has no name (made private, then
/// unlinked at once), so it can be sent again on a retry.
fn spool_stdin() -> Result<(File, u64), WalkError> {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(WalkError::StdinTerminal);
    }
    let path = std::env::temp_dir().join(format!("sandgnat-stdin-{}", uuid::Uuid::new_v4()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(WalkError::Spool)?;
    let _ = std::fs::remove_file(&path);
    let size = std::io::copy(&mut stdin.lock(), &mut file).map_err(WalkError::Spool)?;
    Ok((file, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_out_of_the_tree_and_odd_files_are_skipped() {
        let base = std::env::temp_dir().join(format!("sandgnat-walk-{}", uuid::Uuid::new_v4()));
        let tree = base.join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("b"), b"b").unwrap();
        std::fs::write(tree.join("sub/a"), b"aa").unwrap();
        std::fs::write(base.join("outside"), b"secret").unwrap();
        std::os::unix::fs::symlink(base.join("outside"), tree.join("out")).unwrap();
        std::os::unix::fs::symlink(tree.join("sub/a"), tree.join("again")).unwrap();
        std::os::unix::fs::symlink(tree.join("sub"), tree.join("loop")).unwrap();
        nix::unistd::mkfifo(&tree.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();

        let walk = collect(std::slice::from_ref(&tree)).unwrap();
        let shown: Vec<&str> = walk.items.iter().map(|i| i.display.as_str()).collect();
        let t = tree.display();
        // `again` comes first in name order and stands for sub/a.
        assert_eq!(shown, [format!("{t}/again"), format!("{t}/b")]);
        assert_eq!(walk.items[0].name.as_deref(), Some("again"));
        assert_eq!(walk.items[0].size, 2);
        let skipped = walk.skipped.join("\n");
        assert!(
            skipped.contains("out: a symbolic link out of the tree"),
            "{skipped}"
        );
        assert!(
            skipped.contains("loop: a symbolic link to a directory"),
            "{skipped}"
        );
        assert!(skipped.contains("fifo: not a regular file"), "{skipped}");
        assert!(collect(&[base.join("missing")]).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
