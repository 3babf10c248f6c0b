//! Write-xor-execute, from inside.
//!
//! YARA-X runs rule conditions as machine code: the master generates it
//! when it compiles the rules, and a worker maps it when it loads them
//! (written, then made executable). So the unit cannot refuse executable
//! memory to the whole service (`MemoryDenyWriteExecute=`). Each process
//! refuses it to itself instead, with `prctl(PR_SET_MDWE,
//! PR_MDWE_REFUSE_EXEC_GAIN)`, as soon as it no longer needs it: every
//! child but the workers at the start of its boot, a worker once its
//! rules are loaded and before it takes a request. From then on no
//! mapping of that process becomes executable unless it was mapped so,
//! and none is ever writable and executable at once; the setting cannot
//! be undone, so a sample that took over a worker cannot lift it. Only
//! the master, which reads no sample, keeps the right (it compiles again
//! on HUP).

/// `PR_SET_MDWE` and `PR_MDWE_REFUSE_EXEC_GAIN` (Linux 6.3,
/// include/uapi/linux/prctl.h); the libc crate does not name them yet.
const PR_SET_MDWE: libc::c_int = 65;
const PR_MDWE_REFUSE_EXEC_GAIN: libc::c_ulong = 1;

/// Refuses this process any executable memory it does not already have.
/// Fails on a kernel older than 6.3 (EINVAL), which the caller reports.
pub fn refuse_exec_gain() -> std::io::Result<()> {
    // SAFETY: a prctl with integer arguments only; it changes no memory.
    let r = unsafe {
        libc::prctl(
            PR_SET_MDWE,
            PR_MDWE_REFUSE_EXEC_GAIN,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether this process can still make a fresh anonymous mapping
/// executable (for tests: false once `refuse_exec_gain` took).
#[cfg(test)]
pub fn can_gain_exec() -> bool {
    // SAFETY: a fresh anonymous mapping, never dereferenced, unmapped.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap of one page");
        let gained = libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC) == 0;
        libc::munmap(p, 4096);
        gained
    }
}

#[cfg(test)]
mod tests {
    /// In a child process (the setting is for life): after it, an
    /// anonymous mapping cannot be made executable.
    #[test]
    fn after_it_no_mapping_becomes_executable() {
        // SAFETY: the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if super::refuse_exec_gain().is_err() {
                2
            } else if super::can_gain_exec() {
                4
            } else {
                0
            };
            // SAFETY: leaves the forked child without running the parent's
            // destructors or test harness.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status));
        let code = libc::WEXITSTATUS(status);
        assert_ne!(code, 4, "an anonymous mapping became executable");
        assert_eq!(code, 0, "PR_SET_MDWE failed (kernel older than 6.3?)");
    }
}
