//! A sample on disk, mapped read-only for one scan, with the mapping's
//! resident pages dropped behind the scanner so that a worker's RSS does
//! not grow with the sample.
//!
//! The engine scans one contiguous buffer. Scanning a large file in blocks
//! would bound the mapping, but a string that crosses a block boundary
//! would go unmatched, so the whole file is mapped. Every page of a file
//! mapping the scanner touches counts in the process's RSS until it is
//! unmapped, although it is page cache the kernel shares and can reclaim:
//! left alone, a sample shows as its whole size more worker RSS. While
//! the scan runs, a helper thread drops the mapping's page-table entries
//! every [`TRIM_EVERY`] (`madvise(MADV_DONTNEED)`). The mapping is
//! read-only, so no page of it was ever private and nothing is lost: a
//! page the scanner reads again is mapped again from the page cache, as a
//! minor fault.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// How often the resident pages are dropped during a scan: what stays
/// mapped is what the scanner read since the last trim.
pub const TRIM_EVERY: Duration = Duration::from_millis(10);

/// The helper only sleeps and calls madvise.
const TRIMMER_STACK: usize = 64 * 1024;

/// A whole file mapped read-only.
pub struct Mapped {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only for its whole life and unmapped only
// on drop, so sharing the address between threads cannot race a write;
// madvise(MADV_DONTNEED) on it is safe beside concurrent reads.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    pub fn open(path: &Path) -> io::Result<Mapped> {
        let file = File::open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large to map"))?;
        if len == 0 {
            return Ok(Mapped {
                addr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh read-only private mapping of a file we opened;
        // the descriptor may close afterwards, the mapping keeps the file.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapped { addr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `addr` maps `len` readable bytes until drop.
        unsafe { std::slice::from_raw_parts(self.addr.cast::<u8>(), self.len) }
    }

    /// Drops the mapping's resident pages; the next read of one maps it
    /// again from the page cache.
    fn trim(&self) {
        if self.len > 0 {
            // SAFETY: the range is our own read-only mapping (see above).
            unsafe { libc::madvise(self.addr, self.len, libc::MADV_DONTNEED) };
        }
    }

    /// Runs `scan` over the bytes while a helper thread trims the
    /// resident pages every [`TRIM_EVERY`]; the helper is stopped and
    /// joined before this returns, so it never outlives the mapping. If
    /// no thread can be started the scan runs untrimmed.
    pub fn scan_trimmed<R>(&self, scan: impl FnOnce(&[u8]) -> R) -> R {
        std::thread::scope(|scope| {
            let (stop, stopped) = mpsc::channel::<()>();
            let trimmer = std::thread::Builder::new()
                .name("scan-trim".into())
                .stack_size(TRIMMER_STACK)
                .spawn_scoped(scope, move || {
                    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TRIM_EVERY) {
                        self.trim();
                    }
                });
            if let Err(e) = &trimmer {
                tracing::warn!(error = %e, "cannot start the scan's page trimmer; scanning untrimmed");
            }
            let found = scan(self.bytes());
            drop(stop);
            self.trim();
            found
        })
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping exactly what `open` mapped, once.
            unsafe { libc::munmap(self.addr, self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident bytes of the mapping at `addr`, from /proc/self/smaps.
    fn resident_kib(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let head = format!("{addr:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
        assert!(lines.next().is_some(), "mapping {head} not in smaps");
        lines
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn a_trimmed_scan_reads_every_byte_and_leaves_nothing_resident() {
        let dir = std::env::temp_dir().join(format!("sandgnat-mapped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sample");
        let data: Vec<u8> = (0..32u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let map = Mapped::open(&path).unwrap();
        let addr = map.addr as usize;
        // Touch every page once outside a trimmed scan: all of it stays.
        let sum: u64 = map
            .bytes()
            .iter()
            .step_by(4096)
            .map(|&b| u64::from(b))
            .sum();
        assert!(sum > 0);
        assert!(
            resident_kib(addr) >= 32 * 1024 - 64,
            "untrimmed mapping not resident"
        );
        // During a trimmed scan the pages each chunk brought in are
        // dropped again (waited for, not assumed after a sleep), and the
        // bytes read after a trim are still the file's.
        let (equal, trimmed) = map.scan_trimmed(|bytes| {
            let mut trimmed = 0;
            for chunk in bytes.chunks(4 << 20) {
                std::hint::black_box(chunk.iter().map(|&b| u64::from(b)).sum::<u64>());
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while resident_kib(addr) > 1024 && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if resident_kib(addr) <= 1024 {
                    trimmed += 1;
                }
            }
            (bytes == data.as_slice(), trimmed)
        });
        assert!(equal, "trimmed bytes differ from the file");
        assert_eq!(trimmed, 8, "pages not dropped during the scan");
        assert_eq!(resident_kib(addr), 0, "pages left resident after the scan");
        drop(map);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_file_maps_to_no_bytes() {
        let path = std::env::temp_dir().join(format!("sandgnat-empty-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let map = Mapped::open(&path).unwrap();
        assert_eq!(map.scan_trimmed(|b| b.len()), 0);
        std::fs::remove_file(&path).unwrap();
    }
}
