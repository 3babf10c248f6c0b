//! What a child does to itself before it touches a request: give up root,
//! forbid gaining privileges again, die with its master, keep no core dump
//! (a worker's memory holds samples) and hold no descriptor it was not given.

use std::io;
use std::os::fd::RawFd;

use nix::unistd::{Gid, Group, Uid, User};

#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error("user {0:?} (server.user) does not exist; create it or set server.user")]
    NoUser(String),
    #[error("group {0:?} (server.group) does not exist; create it or set server.group")]
    NoGroup(String),
    #[error("cannot {what}: {source}")]
    Sys {
        what: &'static str,
        source: io::Error,
    },
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> IsolationError {
    move |e| IsolationError::Sys {
        what,
        source: e.into(),
    }
}

/// The account workers switch to, resolved (the master checks this before
/// spawning anything, so a typo fails the start rather than every boot).
pub fn resolve_account(user: &str, group: &str) -> Result<(Uid, Gid), IsolationError> {
    let u = User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| IsolationError::NoUser(user.to_string()))?;
    let g = Group::from_name(group)
        .ok()
        .flatten()
        .ok_or_else(|| IsolationError::NoGroup(group.to_string()))?;
    Ok((u.uid, g.gid))
}

/// The account children switch to: `server.user`/`server.group` when this
/// process runs as root, none otherwise (it already is the service user).
pub fn service_account(
    settings: &crate::config::Settings,
) -> Result<Option<(Uid, Gid)>, IsolationError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    resolve_account(
        settings.server.effective_user(),
        settings.server.effective_group(),
    )
    .map(Some)
}

/// Applies every restriction; `account` is used only when running as root.
pub fn restrict(account: Option<(Uid, Gid)>, master_pid: u32) -> Result<(), IsolationError> {
    if let (true, Some((uid, gid))) = (Uid::effective().is_root(), account) {
        nix::unistd::setgroups(&[gid]).map_err(sys("drop supplementary groups"))?;
        nix::unistd::setgid(gid).map_err(sys("switch group"))?;
        nix::unistd::setuid(uid).map_err(sys("switch user"))?;
    }
    // Changing credentials clears the parent-death signal, so set it after.
    // SAFETY: prctl with integer arguments only.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
            return Err(IsolationError::Sys {
                what: "set the parent-death signal",
                source: io::Error::last_os_error(),
            });
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(IsolationError::Sys {
                what: "set no_new_privs",
                source: io::Error::last_os_error(),
            });
        }
    }
    // The master may have died between our fork and the prctl above.
    if nix::unistd::getppid().as_raw() as u32 != master_pid {
        return Err(IsolationError::Sys {
            what: "stay attached to the master",
            source: io::Error::other("master exited while this child was starting"),
        });
    }
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .map_err(sys("disable core dumps"))?;
    Ok(())
}

/// Marks every descriptor from `first` up close-on-exec, in the child
/// between fork and exec, so that only what was placed below `first`
/// survives the exec. (Marking rather than closing keeps the pipe the
/// standard library uses to report a failed exec.) Async-signal-safe.
pub fn close_from(first: RawFd) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range(2) with plain integers; on an old kernel this
    // fails and the descriptors' own CLOEXEC flags still apply.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        );
    }
}
