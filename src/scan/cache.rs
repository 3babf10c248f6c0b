//! The compiled rules kept on disk, named by what they were compiled
//! from, so that a restart with unchanged rules loads them instead of
//! compiling again. Only the master reads and writes the cache (workers
//! get the compiled form from it through a memfd, and their Landlock rule
//! set does not reach the cache's directory).
//!
//! The name is the SHA-256 of the engine, the code its conditions run as,
//! its options and every rules file (path below the rules directory,
//! length, bytes), so an edited, added, removed or renamed file, or
//! another engine version, misses. A file is written to a temporary name
//! and renamed, so a crash leaves the old file or the new one, never half
//! of one; its header carries the SHA-256 of the compiled bytes, so a
//! damaged file is ignored and replaced rather than handed to the workers
//! (who trust the code in it: wasmtime loads a serialized module as is).

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Compiled, RulesError};

const MAGIC: &[u8; 16] = b"sandgnat-rules\n\x01";
const HEADER: usize = MAGIC.len() + 8 + 32;
const PREFIX: &str = "rules-";
const SUFFIX: &str = ".compiled";

/// What `compile_cached` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Loaded from the cache: nothing compiled.
    Hit,
    /// Compiled and stored.
    Stored,
    /// Compiled; storing failed (the reason), which costs only the next
    /// start a compilation.
    NotStored(String),
}

/// The SHA-256 naming what `dir` (or the bundled rules) compiles to in
/// `parts` parts.
fn key(dir: Option<&Path>, parts: usize) -> Result<String, RulesError> {
    let mut h = Sha256::new();
    h.update(super::ENGINE.as_bytes());
    h.update([0]);
    h.update(super::CODE.as_bytes());
    h.update([0]);
    h.update((parts as u64).to_le_bytes());
    h.update(super::COMPILE_OPTIONS.as_bytes());
    h.update([0]);
    let mut add = |name: &[u8], bytes: &[u8]| {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    match dir {
        Some(dir) => {
            for file in super::sorted_rule_files(dir)? {
                let bytes = std::fs::read(&file).map_err(|source| RulesError::Read {
                    path: file.clone(),
                    source,
                })?;
                let name = file.strip_prefix(dir).unwrap_or(&file);
                add(name.as_os_str().as_encoded_bytes(), &bytes);
            }
        }
        None => {
            for (name, text) in super::BUNDLED {
                add(name.as_bytes(), text.as_bytes());
            }
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// The cache directory, opened without following a symlink and used only
/// through that descriptor (`/proc/self/fd/N/name`), and only if this
/// process owns it and no one else may write in it: a master running as
/// root never reads bytes for its workers, nor writes a file, where the
/// service account could have put a link or a file of its own.
fn open_dir(cache_dir: &Path, create: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    if create {
        match std::fs::DirBuilder::new().mode(0o700).create(cache_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(cache_dir)?;
    let meta = handle.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "{} belongs to uid {} (mode {:o}), not to this process's uid {me} alone",
            cache_dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(handle)
}

fn within(dir: &std::fs::File, name: &str) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

fn file_name(key: &str) -> String {
    format!("{PREFIX}{key}{SUFFIX}")
}

/// The cached compiled form, if the file exists whole.
fn read(cache_dir: &Path, key: &str) -> Option<(usize, Vec<u8>)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = open_dir(cache_dir, false).ok()?;
    let mut file = Vec::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(within(&dir, &file_name(key)))
        .ok()?
        .read_to_end(&mut file)
        .ok()?;
    if file.len() < HEADER || &file[..MAGIC.len()] != MAGIC {
        return None;
    }
    let files = u64::from_le_bytes(file[MAGIC.len()..MAGIC.len() + 8].try_into().ok()?);
    let digest = &file[MAGIC.len() + 8..HEADER];
    let bytes = &file[HEADER..];
    if Sha256::digest(bytes).as_slice() != digest {
        return None;
    }
    Some((usize::try_from(files).ok()?, bytes.to_vec()))
}

fn write(cache_dir: &Path, key: &str, compiled: &Compiled) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = open_dir(cache_dir, true)?;
    let name = file_name(key);
    let tmp = within(&dir, &format!(".{PREFIX}{}.tmp", std::process::id()));
    // A leftover of a crashed write by an earlier process with our pid.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(MAGIC)?;
    f.write_all(&(compiled.files as u64).to_le_bytes())?;
    f.write_all(&Sha256::digest(&compiled.bytes))?;
    f.write_all(&compiled.bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, within(&dir, &name))?;
    dir.sync_all()?;
    // Only the current rules' file is worth keeping.
    for entry in std::fs::read_dir(within(&dir, ""))?.flatten() {
        let other = entry.file_name();
        let other = other.to_string_lossy();
        if other.starts_with(PREFIX) && other.ends_with(SUFFIX) && other != name {
            let _ = std::fs::remove_file(within(&dir, &other));
        }
    }
    Ok(())
}

/// [`super::compile_parts`], through the cache in `cache_dir`.
pub fn compile_cached(
    dir: Option<&Path>,
    parts: usize,
    cache_dir: &Path,
) -> Result<(Compiled, Outcome), RulesError> {
    let key = key(dir, parts)?;
    let source = dir
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "bundled".into());
    if let Some((files, bytes)) = read(cache_dir, &key) {
        let compiled = Compiled {
            bytes,
            source,
            files,
        };
        return Ok((compiled, Outcome::Hit));
    }
    let compiled = super::compile_parts(dir, parts)?;
    let outcome = match write(cache_dir, &key, &compiled) {
        Ok(()) => Outcome::Stored,
        Err(e) => Outcome::NotStored(format!("{}: {e}", cache_dir.display())),
    };
    Ok((compiled, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("sandgnat-rulecache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn unchanged_rules_load_from_the_cache_and_changed_ones_compile() {
        let root = temp("hit");
        let rules = root.join("rules");
        let cache = root.join("cache");
        std::fs::create_dir_all(&rules).unwrap();
        std::fs::write(rules.join("a.yar"), "rule a { condition: true }").unwrap();
        let (first, outcome) = compile_cached(Some(&rules), 1, &cache).unwrap();
        assert_eq!(outcome, Outcome::Stored);
        let (again, outcome) = compile_cached(Some(&rules), 1, &cache).unwrap();
        assert_eq!(outcome, Outcome::Hit);
        assert_eq!(again.bytes, first.bytes);
        assert_eq!(again.files, 1);
        assert!(super::super::RuleSet::load(&again.bytes).is_ok());
        std::fs::write(rules.join("a.yar"), "rule b { condition: true }").unwrap();
        let (changed, outcome) = compile_cached(Some(&rules), 1, &cache).unwrap();
        assert_eq!(outcome, Outcome::Stored);
        assert_ne!(changed.bytes, first.bytes);
        // The older rules' file is gone: one file in the cache.
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
        // Asked for parts, the same files compile again (a second rules
        // file, so that there are two namespaces to split).
        std::fs::write(rules.join("c.yar"), "rule c { condition: true }").unwrap();
        assert_eq!(
            compile_cached(Some(&rules), 1, &cache).unwrap().1,
            Outcome::Stored
        );
        let (parted, outcome) = compile_cached(Some(&rules), 2, &cache).unwrap();
        assert_eq!(outcome, Outcome::Stored);
        assert_eq!(
            super::super::RuleSet::load(&parted.bytes).unwrap().parts(),
            2
        );
        assert_eq!(
            compile_cached(Some(&rules), 2, &cache).unwrap().1,
            Outcome::Hit
        );
    }

    #[test]
    fn a_damaged_cache_file_is_compiled_again_and_replaced() {
        let root = temp("bad");
        let cache = root.join("cache");
        let (good, _) = compile_cached(None, 1, &cache).unwrap();
        let path = cache.join(file_name(&key(None, 1).unwrap()));
        let mut damaged = std::fs::read(&path).unwrap();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        let (again, outcome) = compile_cached(None, 1, &cache).unwrap();
        assert_eq!(outcome, Outcome::Stored);
        assert_eq!(again.bytes, good.bytes);
        std::fs::write(&path, b"short").unwrap();
        assert_eq!(compile_cached(None, 1, &cache).unwrap().1, Outcome::Stored);
        assert_eq!(compile_cached(None, 1, &cache).unwrap().1, Outcome::Hit);
    }

    #[test]
    fn a_cache_that_cannot_be_written_costs_only_the_next_compilation() {
        let root = temp("ro");
        let blocker = root.join("file");
        std::fs::write(&blocker, b"not a directory").unwrap();
        let (compiled, outcome) = compile_cached(None, 1, &blocker.join("cache")).unwrap();
        assert!(matches!(outcome, Outcome::NotStored(_)), "{outcome:?}");
        assert!(super::super::RuleSet::load(&compiled.bytes).is_ok());
    }
}
