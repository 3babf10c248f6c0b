//! Signal reception for the master, gunicorn's way: a handler only counts
//! the signal and writes a byte to a self-pipe; the master's loop wakes on
//! the pipe and decides what to do, outside of signal context.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

const MAX_SIGNAL: usize = 65;

static PENDING: [AtomicU32; MAX_SIGNAL] = [const { AtomicU32::new(0) }; MAX_SIGNAL];
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

/// The signals the master acts on, in the order it handles them when
/// several arrive together: stopping wins over everything else.
pub const HANDLED: [Signal; 10] = [
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGCHLD,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

extern "C" fn record(sig: libc::c_int) {
    // Only async-signal-safe work here; errno is preserved for the
    // interrupted code.
    let saved = io::Error::last_os_error().raw_os_error();
    if let Some(counter) = PENDING.get(sig as usize) {
        counter.fetch_add(1, Ordering::SeqCst);
    }
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; a full pipe is fine (the
        // loop is already due to wake).
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
    if let Some(errno) = saved {
        // SAFETY: restoring the thread's errno.
        unsafe { *libc::__errno_location() = errno };
    }
}

/// The reading end of the self-pipe, with the handlers installed.
pub struct SignalPipe {
    read: OwnedFd,
    _write: OwnedFd,
}

impl SignalPipe {
    pub fn install() -> io::Result<Self> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(io::Error::from)?;
        WAKE_FD.store(write.as_raw_fd(), Ordering::SeqCst);
        let action = SigAction::new(
            SigHandler::Handler(record),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for sig in HANDLED {
            // SAFETY: the handler only touches atomics and write(2).
            unsafe { sigaction(sig, &action) }.map_err(io::Error::from)?;
        }
        Ok(SignalPipe {
            read,
            _write: write,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Empties the pipe after a wake-up.
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = nix::unistd::read(self.read.as_raw_fd(), &mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    /// How many times `sig` arrived since the last call.
    pub fn take(&self, sig: Signal) -> u32 {
        PENDING[sig as usize].swap(0, Ordering::SeqCst)
    }
}
