//! Starting a child: the same binary, re-executed in another role, with the
//! descriptors it is meant to have placed at fixed numbers and every other
//! descriptor closed. Re-executing (rather than forking a running master)
//! gives each child a fresh address space and lets a binary upgrade start
//! new code.

use std::ffi::OsString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Where the descriptors to pass start in the child.
const FIRST_TARGET: RawFd = 3;
/// Scratch range used while shuffling descriptors into place.
const SCRATCH: RawFd = 1000;

/// Runs `exe args...` with `fds[i]` available as descriptor `3 + i`.
pub fn spawn(exe: &Path, args: &[OsString], fds: &[RawFd]) -> io::Result<Child> {
    spawn_command(Command::new(exe), args, fds)
}

/// `spawn` for a command the caller has prepared (e.g. its environment).
pub fn spawn_command(mut cmd: Command, args: &[OsString], fds: &[RawFd]) -> io::Result<Child> {
    let fds = fds.to_vec();
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (fcntl, dup2, close_range).
    unsafe {
        cmd.pre_exec(move || {
            // Copy every source out of the way first, so that placing one
            // descriptor never overwrites another that is still to be placed.
            let mut scratch = [0 as RawFd; 32];
            let n = fds.len().min(scratch.len());
            for i in 0..n {
                let high = libc::fcntl(fds[i], libc::F_DUPFD, SCRATCH);
                if high < 0 {
                    return Err(io::Error::last_os_error());
                }
                scratch[i] = high;
            }
            for (i, &high) in scratch.iter().enumerate().take(n) {
                if libc::dup2(high, FIRST_TARGET + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            crate::isolation::close_from(FIRST_TARGET + n as RawFd);
            Ok(())
        });
    }
    cmd.spawn()
}
