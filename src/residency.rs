//! Dropping the code pages a child mapped only to boot.
//!
//! A child maps its binary and shared libraries from the page cache, and
//! every page it has touched (with the neighbours the kernel maps around
//! each fault, 64 KiB at a time) counts in its RSS until it is unmapped.
//! Booting runs much code that never runs again: argument parsing,
//! settings, log set-up, loading the rules. Once a child has booted,
//! [`drop_boot_pages`] drops the page-table entries of its clean read-only
//! file mappings, so that `ps` and `top` show what the child runs from then
//! on rather than what it ran once. The pages stay in the page cache (the
//! master and the other children map them too); one needed again costs a
//! minor fault.
//!
//! Only mappings without private pages are dropped: a relocated read-only
//! segment (RELRO) holds copy-on-write pages the dynamic linker wrote, and
//! dropping those would put the file's unrelocated bytes back. Call it
//! while no other thread of the child maps or unmaps files (once booted,
//! before it takes work: a scan maps its sample), so the mappings read
//! are the mappings dropped.

/// One mapping from `/proc/self/smaps`.
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    /// Readable, not writable.
    read_only: bool,
    /// The file it maps, if any.
    path: Option<String>,
    rss_kib: u64,
    /// Pages of it that are this process's own copies.
    private_kib: u64,
}

impl Mapping {
    /// A clean read-only file mapping with something resident.
    fn droppable(&self) -> bool {
        self.path.is_some() && self.read_only && self.private_kib == 0 && self.rss_kib > 0
    }
}

/// Drops the resident pages of every clean read-only file mapping;
/// returns how many KiB were resident in them.
pub fn drop_boot_pages() -> u64 {
    drop_clean_pages(|_| true)
}

/// Drops the resident pages of the clean read-only mappings of the files
/// `chosen` picks.
fn drop_clean_pages(chosen: impl Fn(&str) -> bool) -> u64 {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut dropped = 0;
    for m in parse(&smaps) {
        if !(m.droppable() && m.path.as_deref().is_some_and(&chosen)) {
            continue;
        }
        // SAFETY: a read-only file mapping of this process with no private
        // pages: dropping its page-table entries loses nothing, and a later
        // read maps the same bytes again from the file.
        let rc = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            dropped += m.rss_kib;
        }
    }
    dropped
}

fn parse(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        if let Some(m) = header(line) {
            out.push(m);
            continue;
        }
        let Some(current) = out.last_mut() else {
            continue;
        };
        let mut fields = line.split_whitespace();
        let (Some(key), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        let kib: u64 = value.parse().unwrap_or(0);
        match key {
            "Rss:" => current.rss_kib = kib,
            // Copy-on-write copies of a file mapping's pages. (Not
            // Private_Dirty, which also counts the file's own dirty pages
            // in the page cache, as a freshly written binary has.)
            "Anonymous:" => current.private_kib = kib,
            _ => {}
        }
    }
    out
}

/// `start-end perms offset dev inode [path]`, else None.
fn header(line: &str) -> Option<Mapping> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?.as_bytes();
    if perms.len() != 4 {
        return None;
    }
    let path = fields.nth(3).filter(|p| p.starts_with('/'));
    Some(Mapping {
        start,
        end,
        read_only: perms[0] == b'r' && perms[1] == b'-',
        path: path.map(str::to_string),
        rss_kib: 0,
        private_kib: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
5600aa000000-5600aa400000 r--p 00000000 fd:01 42   /usr/bin/sandgnat
Rss:                1024 kB
Anonymous:             0 kB
Private_Dirty:       256 kB
VmFlags: rd mr mw me
5600aa400000-5600ab000000 r-xp 00400000 fd:01 42   /usr/bin/sandgnat
Rss:                6000 kB
Anonymous:             0 kB
5600ab000000-5600ab100000 r--p 01000000 fd:01 42   /usr/bin/sandgnat
Rss:                 512 kB
Anonymous:           512 kB
5600ab100000-5600ab200000 rw-p 01100000 fd:01 42   /usr/bin/sandgnat
Rss:                 100 kB
Anonymous:           100 kB
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
Rss:                 132 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0    [vdso]
Rss:                   8 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_are_candidates() {
        let maps = parse(SAMPLE);
        assert_eq!(maps.len(), 6);
        let droppable: Vec<usize> = maps
            .iter()
            .filter(|m| m.droppable())
            .map(|m| m.start)
            .collect();
        // The RELRO segment (private pages), the writable data, the heap
        // and the vdso stay.
        assert_eq!(droppable, vec![0x5600aa000000, 0x5600aa400000]);
        assert_eq!(maps[1].rss_kib, 6000);
    }

    #[test]
    fn dropping_lowers_this_process_rss() {
        // Only the test binary's own mappings, read and dropped: other
        // tests in this process map and unmap sample files concurrently.
        let exe = std::env::current_exe().unwrap().display().to_string();
        let exe_rss_kib = || -> u64 {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            parse(&smaps)
                .iter()
                .filter(|m| m.path.as_deref() == Some(exe.as_str()) && m.read_only)
                .map(|m| m.rss_kib)
                .sum()
        };
        let before = exe_rss_kib();
        let dropped = drop_clean_pages(|p| p == exe);
        assert!(dropped > 0, "nothing dropped");
        let after = exe_rss_kib();
        assert!(
            after < before,
            "resident {before} KiB did not fall ({after} KiB)"
        );
    }
}
