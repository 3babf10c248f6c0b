//! The Landlock half of confinement: a rule set built from a `Policy`,
//! applied best effort (what the kernel's ABI lacks is reported, not
//! fatal). File-system rights are those of ABI 8 at most: ABI 9 would
//! also bound connecting to Unix sockets by path, which needs the
//! recorder's and the database's socket directories listed first.

use std::path::Path;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use super::{ConfineError, Policy};

/// The newest ABI whose rights this module grants knowingly.
const TARGET: ABI = ABI::V8;

/// What a child's rule set enforced.
#[derive(Debug, Clone)]
pub struct Enforced {
    /// The kernel's Landlock ABI (0: none, or refused).
    pub abi: i32,
    /// Parts of the policy this kernel does not enforce.
    pub missing: Vec<&'static str>,
}

/// The running kernel's Landlock ABI, or the errno that refused the query
/// (ENOSYS/EOPNOTSUPP: no Landlock; EPERM: a seccomp filter around this
/// process, such as a systemd unit's `SystemCallFilter`, refuses it).
pub fn kernel_abi() -> Result<i32, i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the version query takes no attribute pointer.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(v as i32)
    }
}

/// What the kernel here cannot enforce of the children's policies.
pub fn unsupported() -> Vec<&'static str> {
    match kernel_abi() {
        Err(libc::EPERM) => vec![
            "all of Landlock: its system calls are refused by a seccomp filter around the service \
             (a systemd unit's SystemCallFilter lacks landlock_create_ruleset, landlock_add_rule, \
             landlock_restrict_self)",
        ],
        Err(_) | Ok(0) => vec!["all of Landlock: the kernel has none (file system and TCP ports)"],
        Ok(abi) => missing_at(abi),
    }
}

fn missing_at(abi: i32) -> Vec<&'static str> {
    let mut m = Vec::new();
    if abi < 2 {
        m.push("renaming or linking files across directories (ABI 2)");
    }
    if abi < 3 {
        m.push("truncating files (ABI 3)");
    }
    if abi < 4 {
        m.push("TCP connect and bind by port (ABI 4)");
    }
    if abi < 5 {
        m.push("device ioctls (ABI 5)");
    }
    if abi < 6 {
        m.push("signals and abstract Unix sockets outside the sandbox (ABI 6)");
    }
    m
}

/// Applies `policy`'s rule set to the calling thread (and the threads it
/// starts later).
pub fn apply(policy: &Policy) -> Result<Enforced, ConfineError> {
    let err = |e: landlock::RulesetError| ConfineError::Landlock(e.to_string());
    let abi = kernel_abi().unwrap_or(0);
    let missing = if abi > 0 {
        missing_at(abi)
    } else {
        unsupported()
    };
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let read_write = read
        | AccessFs::WriteFile
        | AccessFs::RemoveFile
        | AccessFs::RemoveDir
        | AccessFs::MakeReg
        | AccessFs::MakeDir
        | AccessFs::Refer
        | AccessFs::Truncate;
    let append: BitFlags<AccessFs> = AccessFs::WriteFile | AccessFs::MakeReg;

    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET))
        .map_err(err)?
        .handle_access(AccessNet::BindTcp)
        .map_err(err)?;
    if policy.connect_ports.is_some() {
        ruleset = ruleset.handle_access(AccessNet::ConnectTcp).map_err(err)?;
    }
    let mut created = ruleset
        .scope(Scope::from_all(TARGET))
        .map_err(err)?
        .create()
        .map_err(err)?;
    for (paths, access) in [
        (&policy.read_only, read),
        (&policy.read_write, read_write),
        (&policy.log_dirs, append),
    ] {
        for path in paths {
            if let Some(rule) = beneath(path, access) {
                created = created.add_rule(rule).map_err(err)?;
            }
        }
    }
    for port in policy.connect_ports.iter().flatten() {
        created = created
            .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
            .map_err(err)?;
    }
    let status = created.restrict_self().map_err(err)?;
    let missing = match status.ruleset {
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => missing,
        RulesetStatus::NotEnforced if missing.is_empty() => vec!["all of Landlock"],
        RulesetStatus::NotEnforced => missing,
    };
    Ok(Enforced { abi, missing })
}

/// A rule for `path` with the rights a file or directory there can hold;
/// none for a path that does not exist (a library directory this
/// distribution lacks).
fn beneath(path: &Path, access: BitFlags<AccessFs>) -> Option<PathBeneath<PathFd>> {
    let fd = PathFd::new(path).ok()?;
    let is_dir = std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false);
    let access = if is_dir {
        access
    } else {
        access & AccessFs::from_file(TARGET)
    };
    Some(PathBeneath::new(fd, access))
}
