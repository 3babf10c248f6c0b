//! Binary upgrade (USR2): the running master executes the binary found at
//! its path now, handing it every listening socket; the new master starts
//! its workers and, once they are ready, writes one byte on a pipe. Only
//! then does the old master stop its workers gracefully and leave, so at no
//! moment is nobody accepting. If the new master dies first, the old one
//! carries on as if nothing happened.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::spawn;
use crate::sockets::Listeners;

pub struct Upgrade {
    pub pid: i32,
    pub pipe: OwnedFd,
    pub exited: bool,
}

pub enum Status {
    Waiting,
    Ready,
    Failed,
}

/// Flags `serve` takes only from an old master.
pub const INHERIT_FLAG: &str = "--inherit";
pub const PIPE_FLAG: &str = "--upgrade-pipe";

impl Upgrade {
    pub fn start(exe: &Path, argv: &[OsString], listeners: &Listeners) -> io::Result<Self> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(io::Error::from)?;
        // The new master finds the sockets from descriptor 3 on, and the
        // pipe right after them.
        let names: Vec<String> = listeners
            .all
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{}={}", l.name, 3 + i as RawFd))
            .collect();
        let mut fds: Vec<RawFd> = listeners.all.iter().map(|l| l.fd.as_raw_fd()).collect();
        let pipe_fd = 3 + listeners.all.len() as RawFd;
        fds.push(write.as_raw_fd());

        let mut args: Vec<OsString> = strip_internal(argv);
        args.push(INHERIT_FLAG.into());
        args.push(names.join(",").into());
        args.push(PIPE_FLAG.into());
        args.push(pipe_fd.to_string().into());
        let mut cmd = std::process::Command::new(exe);
        // systemd's WATCHDOG_PID names this master; once the new one holds
        // MAINPID, it is the one that must ping, and an unset WATCHDOG_PID
        // means "whoever reads WATCHDOG_USEC" (sd_watchdog_enabled(3)).
        cmd.env_remove("WATCHDOG_PID");
        let child = spawn::spawn_command(cmd, &args, &fds)?;
        drop(write);
        Ok(Upgrade {
            pid: child.id() as i32,
            pipe: read,
            exited: false,
        })
    }

    pub fn poll(&mut self) -> Status {
        let mut byte = [0u8; 1];
        match nix::unistd::read(self.pipe.as_raw_fd(), &mut byte) {
            Ok(1) => Status::Ready,
            // EOF: the new master closed the pipe without saying ready.
            Ok(_) => Status::Failed,
            Err(nix::errno::Errno::EAGAIN) if !self.exited => Status::Waiting,
            Err(_) => Status::Failed,
        }
    }
}

/// The operator's arguments without a previous upgrade's hand-over flags.
fn strip_internal(argv: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in argv {
        if skip {
            skip = false;
            continue;
        }
        if a == INHERIT_FLAG || a == PIPE_FLAG {
            skip = true;
            continue;
        }
        out.push(a.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_over_flags_are_not_passed_twice() {
        let argv: Vec<OsString> = [
            "serve",
            "--config",
            "x.toml",
            "--inherit",
            "workers=5",
            "--upgrade-pipe",
            "9",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let out = strip_internal(&argv);
        assert_eq!(
            out,
            vec![OsString::from("serve"), "--config".into(), "x.toml".into()]
        );
    }
}
