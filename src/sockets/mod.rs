//! Listening sockets: binding them in the master, handing them down, and
//! taking them over across a binary upgrade.
//!
//! The master owns every listening socket for its whole life, so a child
//! that dies never takes a socket (or the connections waiting in its
//! backlog) with it. Children receive them at fixed descriptor numbers.

pub mod backlog;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::Settings;

/// Descriptor numbers a child finds its inheritance at.
pub const SCOREBOARD_FD: RawFd = 3;
pub const SETTINGS_FD: RawFd = 4;
pub const FIRST_LISTENER_FD: RawFd = 5;
/// Workers find the compiled YARA rules here (after their one listener).
pub const RULES_FD: RawFd = 6;

/// The name of the workers' Unix socket in listener lists.
pub const WORKERS: &str = "workers";
/// The name of the metrics socket in listener lists.
pub const METRICS: &str = "metrics";
/// The recorder's socket (`crate::recorder`), beside the workers' one.
pub const RECORDER: &str = "recorder";

/// Where the recorder's socket is bound: beside the workers' one, in the
/// directory only the service account can enter.
pub fn recorder_socket_path(settings: &Settings) -> PathBuf {
    settings.server.socket.with_file_name("recorder.sock")
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot bind {name} on {addr}: {source}")]
    Bind {
        name: String,
        addr: String,
        source: io::Error,
    },
    #[error(
        "another process is already listening on {0}; stop it or choose another server.socket"
    )]
    InUse(PathBuf),
}

/// One listening socket and what it is for.
#[derive(Debug)]
pub struct Listener {
    /// `workers`, `metrics`, `tls:<addr>` or `plain:<addr>`.
    pub name: String,
    pub fd: OwnedFd,
}

/// Every socket the appliance listens on.
#[derive(Debug, Default)]
pub struct Listeners {
    pub all: Vec<Listener>,
}

/// Sockets received from a previous master, by name.
#[derive(Debug, Default)]
pub struct Inherited(Vec<Listener>);

impl Inherited {
    /// Parses `name=fd,name=fd` as passed by the old master on upgrade.
    pub fn from_arg(arg: &str) -> io::Result<Self> {
        let mut out = Vec::new();
        for pair in arg.split(',').filter(|p| !p.is_empty()) {
            let (name, fd) = pair.rsplit_once('=').ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("bad inherited socket {pair:?}"),
                )
            })?;
            let fd: RawFd = fd.parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("bad descriptor in {pair:?}"),
                )
            })?;
            // Refuse anything that is not a socket rather than adopt a stray fd.
            let stat = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
            if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("inherited descriptor {fd} for {name} is not a socket"),
                ));
            }
            // SAFETY: the old master passed this descriptor for us to own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            set_cloexec(&fd)?;
            out.push(Listener {
                name: name.to_string(),
                fd,
            });
        }
        Ok(Inherited(out))
    }
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    Ok(())
}

impl Listeners {
    /// Binds what the settings ask for, adopting inherited sockets by name.
    /// Inherited sockets no longer configured are closed.
    pub fn bind(settings: &Settings, inherited: Inherited) -> Result<Self, BindError> {
        let mut listeners = Listeners { all: inherited.0 };
        listeners.rebind(settings)?;
        Ok(listeners)
    }

    /// Brings the set in line with `settings` (HUP): binds new addresses
    /// first and only then closes the ones no longer wanted, so a failure
    /// leaves everything as it was. Sockets kept by name are never closed.
    pub fn rebind(&mut self, settings: &Settings) -> Result<(), BindError> {
        let backlog = settings.server.backlog as i32;
        let wanted = wanted(settings);
        let mut fresh = Vec::new();
        for (name, addr) in &wanted {
            if self.get(name).is_some() {
                continue;
            }
            let fd = match addr {
                Address::Unix(path) => bind_unix(name, path, backlog)?,
                Address::Tcp(addr) => bind_tcp(name, addr, backlog)?,
            };
            fresh.push(Listener {
                name: name.clone(),
                fd,
            });
        }
        self.all
            .retain(|l| wanted.iter().any(|(n, _)| *n == l.name));
        self.all.extend(fresh);
        // A stable order: workers first, then metrics, then public ones.
        self.all.sort_by_key(|l| {
            wanted
                .iter()
                .position(|(n, _)| *n == l.name)
                .unwrap_or(usize::MAX)
        });
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Listener> {
        self.all.iter().find(|l| l.name == name)
    }

    /// The public sockets the front end serves (TLS and plain).
    pub fn public(&self) -> impl Iterator<Item = &Listener> {
        self.all
            .iter()
            .filter(|l| l.name.starts_with("tls:") || l.name.starts_with("plain:"))
    }
}

enum Address<'a> {
    Unix(PathBuf),
    Tcp(&'a str),
}

fn wanted(settings: &Settings) -> Vec<(String, Address<'_>)> {
    let mut out = vec![
        (
            WORKERS.to_string(),
            Address::Unix(settings.server.socket.clone()),
        ),
        (
            RECORDER.to_string(),
            Address::Unix(recorder_socket_path(settings)),
        ),
        (METRICS.to_string(), Address::Tcp(&settings.metrics.bind)),
    ];
    out.extend(
        settings
            .proxy
            .bind
            .iter()
            .map(|a| (format!("tls:{a}"), Address::Tcp(a))),
    );
    out.extend(
        settings
            .proxy
            .plain_bind
            .iter()
            .map(|a| (format!("plain:{a}"), Address::Tcp(a))),
    );
    out
}

fn bind_unix(name: &str, path: &Path, backlog: i32) -> Result<OwnedFd, BindError> {
    let err = |source| BindError::Bind {
        name: name.into(),
        addr: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        // A live socket means another master; a dead one is a leftover.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None).map_err(err)?;
    let addr = SockAddr::unix(path).map_err(err)?;
    socket.bind(&addr).map_err(err)?;
    // Only the service's account (and its group, for an operator's curl)
    // talks to the workers directly. The recorder takes rows that are
    // already authenticated, so only the service's account may reach it.
    let mode = if name == RECORDER { 0o600 } else { 0o660 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    socket.listen(backlog).map_err(err)?;
    Ok(socket.into())
}

fn bind_tcp(name: &str, addr: &str, backlog: i32) -> Result<OwnedFd, BindError> {
    let err = |source| BindError::Bind {
        name: name.to_string(),
        addr: addr.to_string(),
        source,
    };
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let socket = Socket::new(
        Domain::for_address(parsed),
        Type::STREAM.cloexec(),
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if parsed.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.bind(&parsed.into()).map_err(err)?;
    socket.listen(backlog).map_err(err)?;
    Ok(socket.into())
}
