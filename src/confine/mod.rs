//! Confinement of the children that touch samples (workers and job
//! runners): a seccomp allow-list (`seccomp`) and a Landlock rule set
//! (`landlock`), with what each role needs stated once here (`Policy`).
//!
//! Both are applied at the very start of a child's boot, right after it
//! has read its settings and before it opens its logs: Landlock and a
//! filter installed with `prctl` bind only the calling thread and the
//! threads it starts later, and the log writers are the first threads a
//! child starts. So the filter also allows what the rest of the boot does
//! (the privilege drop, the event loop, loading the rules), and the rule
//! set allows the files the boot opens (logs, the account database).
//!
//! The seccomp filter is not optional. Landlock is best effort: a kernel
//! without it, with an older ABI, or a service manager whose own filter
//! refuses its system calls leaves part of the rule set unenforced; the
//! master says once what (`log_kernel_support`), and the children log it
//! at debug level only.

mod landlock;
mod mdwe;
mod seccomp;

#[cfg(test)]
pub use mdwe::can_gain_exec;
pub use mdwe::refuse_exec_gain;

use std::path::PathBuf;

use crate::config::Settings;

/// The children that are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Worker,
    Runner,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("cannot build the seccomp filter: {0}")]
    Build(String),
    #[error("cannot install the seccomp filter: {0}")]
    Install(std::io::Error),
    #[error("cannot apply the Landlock rule set: {0}")]
    Landlock(String),
}

/// Socket families a role may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    /// AF_NETLINK (`NETLINK_SOCK_DIAG` only): the status page reads the
    /// workers' accept queue through it.
    pub netlink: bool,
}

/// What one role may touch once confined.
#[derive(Debug, Clone)]
pub struct Policy {
    pub role: Role,
    /// Directories read and written beneath (samples).
    pub read_write: Vec<PathBuf>,
    /// Directories or files only read.
    pub read_only: Vec<PathBuf>,
    /// Directories where log files are appended to and created (rotation,
    /// reopening after logrotate); nothing in them can be read.
    pub log_dirs: Vec<PathBuf>,
    /// TCP ports `connect` may reach; `None`: any (webhooks go anywhere).
    pub connect_ports: Option<Vec<u16>>,
    pub families: Families,
}

/// What the system's libraries read while a child runs: name and address
/// resolution (the database's host, a webhook's), the account database
/// (the privilege drop runs after confinement), time zones, the dynamic
/// loader's cache and the libraries NSS loads.
const SYSTEM_READ: &[&str] = &[
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/ld.so.cache",
    "/usr/share/zoneinfo",
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/dev/null",
    "/dev/urandom",
    // The process's own entries: the status page's /proc/net/tcp. Never
    // all of /proc: the master's environment there may carry the
    // database's password.
    "/proc/self",
];

/// Where the system's root certificates live (public data).
const CA_READ: &[&str] = &[
    "/etc/ssl",
    "/etc/pki",
    "/etc/ca-certificates",
    "/usr/share/ca-certificates",
    "/usr/local/share/ca-certificates",
];

impl Policy {
    /// The policy of `role` under `settings`: the only place that says
    /// what a confined child may touch.
    pub fn of(role: Role, settings: &Settings) -> Policy {
        let quarantine = crate::storage::local::quarantine_dir(settings);
        let spool = crate::storage::spool_dir(settings);
        let s3 = settings.storage.is_s3();
        let mut read_only: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
        // TLS roots: the webhooks' (runners), an https S3 endpoint's
        // (both), read on first use, from the usual places or
        // SSL_CERT_FILE/_DIR.
        if role == Role::Runner || s3 {
            read_only.extend(CA_READ.iter().map(PathBuf::from));
            read_only.extend(
                ["SSL_CERT_FILE", "SSL_CERT_DIR"]
                    .iter()
                    .filter_map(std::env::var_os)
                    .map(PathBuf::from),
            );
        }
        let read_write = match role {
            // Intake streams into the spool and renames into the quarantine;
            // the download and export routes read the quarantine.
            Role::Worker => vec![quarantine, spool],
            // Static analysis reads the sample: in the quarantine, or, with
            // a remote store, from its own copy in the fetch directory
            // (never the spool itself: uploads in progress live there).
            Role::Runner if s3 => {
                read_only.push(quarantine);
                vec![crate::storage::fetch_dir(settings)]
            }
            Role::Runner => {
                read_only.push(quarantine);
                Vec::new()
            }
        };
        let log_dirs = [&settings.log.error_log, &settings.log.access_log]
            .into_iter()
            .filter(|t| t.as_str() != "-")
            .map(|t| {
                let p = PathBuf::from(t);
                match p.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                }
            })
            .collect();
        let connect_ports = match role {
            // Postgres and, with `storage.backend = "s3"`, the store's
            // port: workers never reach Redis (the front end's rate limits
            // and the metrics process do).
            Role::Worker => Some(
                database_ports(settings)
                    .into_iter()
                    .chain(settings.storage.port())
                    .collect(),
            ),
            // A webhook may name any port, so runners get no TCP bound.
            Role::Runner => None,
        };
        Policy {
            role,
            read_write,
            read_only,
            log_dirs,
            connect_ports,
            families: Families {
                netlink: role == Role::Worker,
            },
        }
    }
}

/// The TCP port of `database.url` (none when it names a Unix socket).
fn database_ports(settings: &Settings) -> Vec<u16> {
    use sqlx::postgres::PgConnectOptions;
    match settings.database.url.parse::<PgConnectOptions>() {
        Ok(o) if !o.get_host().starts_with('/') => vec![o.get_port()],
        _ => Vec::new(),
    }
}

/// What was enforced, for the child's log.
#[derive(Debug, Clone)]
pub struct Report {
    pub syscalls: usize,
    pub landlock: landlock::Enforced,
}

/// Confines the calling process as `role`: the Landlock rule set, then
/// the seccomp filter (last, so it need not allow Landlock's calls).
/// Call while the process has one thread. With `debug.confine = false`
/// nothing is applied and a warning says so.
pub fn apply(role: Role, settings: &Settings) -> Result<Option<Report>, ConfineError> {
    if !settings.debug.confine {
        return Ok(None);
    }
    let policy = Policy::of(role, settings);
    // Both need it without CAP_SYS_ADMIN; isolation sets it again later.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(ConfineError::Install(std::io::Error::last_os_error()));
    }
    let landlock = landlock::apply(&policy)?;
    let syscalls = seccomp::install(&policy)?;
    Ok(Some(Report { syscalls, landlock }))
}

/// Logs what `apply` did (once the child's log is open).
pub fn log_applied(role: Role, applied: &Option<Report>) {
    match applied {
        None => tracing::warn!(
            ?role,
            "debug.confine = false: this process runs without its seccomp filter and Landlock rules"
        ),
        Some(r) => tracing::debug!(
            ?role,
            syscalls = r.syscalls,
            landlock_abi = r.landlock.abi,
            not_enforced = %r.landlock.missing.join("; "),
            "confined"
        ),
    }
}

/// Says once, from the master, what this kernel's Landlock does not
/// enforce for the children, and whether confinement is off.
pub fn log_kernel_support(settings: &Settings) {
    if !settings.debug.confine {
        tracing::warn!(
            "debug.confine = false: workers and job runners run without seccomp or Landlock (debugging only)"
        );
        return;
    }
    let missing = landlock::unsupported();
    if missing.is_empty() {
        tracing::info!(
            abi = landlock::kernel_abi().unwrap_or(0),
            "workers and job runners are confined (seccomp, Landlock)"
        );
    } else {
        tracing::warn!(
            abi = landlock::kernel_abi().unwrap_or(0),
            not_enforced = %missing.join("; "),
            "Landlock is partly unavailable: workers and job runners run with the seccomp filter and without what is listed"
        );
    }
}
