//! The seccomp half of confinement: one allow-list for the confined
//! roles, compiled with `seccompiler` and installed with
//! `prctl(PR_SET_SECCOMP)` rather than seccomp(2), which the unit's
//! `SystemCallFilter=@system-service` refuses.
//!
//! Anything not listed fails with EPERM, `execve` and `ptrace` included:
//! a hostile sample that takes over a worker gains nothing from a kill
//! rather than an error, and a kill would also end the other clients'
//! requests in flight. Argument checks narrow the calls that can do more
//! than the roles need: `socket` to the roles' families, `clone` to
//! threads, and `clone3` answers ENOSYS so the C library falls back to a
//! `clone` whose flags can be read.
//!
//! The list is what the roles were seen doing under the end-to-end tests
//! with the filter in log mode, not a guess: adding a feature that makes
//! a new system call means adding it here.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::{ConfineError, Policy};

/// Allowed whatever their arguments.
const ALLOWED: &[libc::c_long] = &[
    // Memory: the allocator, the scan's mapping and its trimming helper.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_membarrier,
    // Threads (the blocking pool, the log writers) and their locks.
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_tgkill,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Signals.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    // Time.
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    // Descriptors and files (Landlock decides which files).
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_fcntl,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_flock,
    libc::SYS_getcwd,
    libc::SYS_umask,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    // The event loop.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_pipe2,
    libc::SYS_ppoll,
    // Sockets (which families: `socket` below; which ports: Landlock).
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_accept4,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_shutdown,
    // Identity, limits and the rest of the boot (the privilege drop runs
    // after confinement; without CAP_SETUID these change nothing).
    libc::SYS_getrandom,
    libc::SYS_uname,
    libc::SYS_prctl,
    libc::SYS_prlimit64,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_getgroups,
    libc::SYS_setgroups,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_getrusage,
    libc::SYS_sysinfo,
];

/// The calls x86_64 has besides their `*at`/`p*` forms, which its C
/// library and Rust's standard library still make.
#[cfg(target_arch = "x86_64")]
const ALLOWED_X86_64: &[libc::c_long] = &[
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_mkdir,
    libc::SYS_unlink,
    libc::SYS_rmdir,
    libc::SYS_rename,
    libc::SYS_chmod,
    libc::SYS_dup2,
    libc::SYS_poll,
    libc::SYS_epoll_wait,
    libc::SYS_getrlimit,
    libc::SYS_arch_prctl,
];
#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_X86_64: &[libc::c_long] = &[];

/// Builds the allow-list for `policy` and installs it; returns how many
/// system calls it allows.
pub fn install(policy: &Policy) -> Result<usize, ConfineError> {
    let (allow, count) = allow_list(policy)?;
    let clone3 = clone3_enosys()?;
    // The allow-list first: of two filters answering the same action, the
    // later one's errno wins, so clone3 answers ENOSYS, not EPERM.
    install_program(&allow)?;
    install_program(&clone3)?;
    Ok(count)
}

fn arch() -> Result<TargetArch, ConfineError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| ConfineError::Build(e.to_string()))
}

fn build_err(e: seccompiler::BackendError) -> ConfineError {
    ConfineError::Build(e.to_string())
}

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

fn allow_list(policy: &Policy) -> Result<(BpfProgram, usize), ConfineError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in ALLOWED.iter().chain(ALLOWED_X86_64) {
        rules.insert(*nr, Vec::new());
    }
    let mut socket = Vec::new();
    for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6] {
        socket.push(
            SeccompRule::new(vec![
                cond(0, SeccompCmpOp::Eq, family as u64).map_err(build_err)?
            ])
            .map_err(build_err)?,
        );
    }
    if policy.families.netlink {
        socket.push(
            SeccompRule::new(vec![
                cond(0, SeccompCmpOp::Eq, libc::AF_NETLINK as u64).map_err(build_err)?,
                cond(2, SeccompCmpOp::Eq, libc::NETLINK_SOCK_DIAG as u64).map_err(build_err)?,
            ])
            .map_err(build_err)?,
        );
    }
    rules.insert(libc::SYS_socket, socket);
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![
            cond(0, SeccompCmpOp::MaskedEq(thread), thread).map_err(build_err)?
        ])
        .map_err(build_err)?],
    );
    // Terminal and non-blocking checks only: no device ioctls.
    let ioctls = [
        libc::FIONBIO,
        libc::FIOCLEX,
        libc::FIONCLEX,
        libc::FIONREAD,
        libc::TCGETS,
        libc::TIOCGWINSZ,
    ];
    let mut ioctl = Vec::new();
    for request in ioctls {
        // The constants are c_ulong with glibc, c_int with musl.
        #[allow(clippy::unnecessary_cast)]
        ioctl.push(
            SeccompRule::new(vec![
                cond(1, SeccompCmpOp::Eq, request as u64).map_err(build_err)?
            ])
            .map_err(build_err)?,
        );
    }
    rules.insert(libc::SYS_ioctl, ioctl);
    let count = rules.len();
    let filter =
        SeccompFilter::new(rules, mismatch(), SeccompAction::Allow, arch()?).map_err(build_err)?;
    let program: BpfProgram = filter.try_into().map_err(build_err)?;
    Ok((program, count))
}

/// What an unlisted call gets. While deriving the list, `SeccompAction::Log`
/// here makes the kernel log each one (`dmesg`, audit type 1326) instead.
fn mismatch() -> SeccompAction {
    SeccompAction::Errno(libc::EPERM as u32)
}

fn clone3_enosys() -> Result<BpfProgram, ConfineError> {
    let mut rules = BTreeMap::new();
    rules.insert(libc::SYS_clone3, Vec::new());
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(build_err)?;
    filter.try_into().map_err(build_err)
}

fn install_program(program: &BpfProgram) -> Result<(), ConfineError> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points into `program`, which outlives the call; the
    // kernel copies it. no_new_privs is already set (`super::apply`).
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(ConfineError::Install(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_that_leaves_the_process_is_allowed() {
        let forbidden = [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_seccomp,
            libc::SYS_bpf,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_kill,
            libc::SYS_memfd_create,
            libc::SYS_io_uring_setup,
            libc::SYS_userfaultfd,
            libc::SYS_perf_event_open,
            libc::SYS_clone3,
        ];
        for nr in forbidden {
            assert!(
                !ALLOWED.contains(&nr) && !ALLOWED_X86_64.contains(&nr),
                "system call {nr} is allowed"
            );
        }
    }

    #[test]
    fn both_roles_compile() {
        let settings = crate::config::Settings::default();
        for role in [super::super::Role::Worker, super::super::Role::Runner] {
            let (program, count) = allow_list(&Policy::of(role, &settings)).unwrap();
            assert!(!program.is_empty());
            assert_eq!(count, ALLOWED.len() + ALLOWED_X86_64.len() + 3);
        }
        assert!(!clone3_enosys().unwrap().is_empty());
    }
}
