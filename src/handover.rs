//! The settings hand-over between the master and its children: the master
//! stores its settings (and the compiled rules) in anonymous in-memory
//! files placed at fixed descriptors (`crate::sockets`), and each child
//! reads them back at boot. Both sides live here so that a child need not
//! import the master. The scoreboard's shared memory is such a file too
//! (`anonymous_file`).

use std::io;
use std::os::fd::OwnedFd;

use crate::config::Settings;

/// The settings as JSON in a memfd, which children read at descriptor 4.
pub fn settings_memfd(settings: &Settings) -> io::Result<OwnedFd> {
    memfd(
        "sandgnat-settings",
        &serde_json::to_vec(settings).map_err(io::Error::other)?,
    )
}

/// An anonymous in-memory file holding `bytes`, for children to read,
/// sealed once written: a child holds a descriptor to the same file as
/// the master and every later child, so without the seals a worker taken
/// over by a sample could rewrite the rules (or settings) the next
/// worker loads.
pub fn memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    use std::io::Write;
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    let fd = memfd_create(
        &name,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    std::fs::File::from(fd.try_clone()?).write_all(bytes)?;
    let seals = SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_SEAL;
    fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        FcntlArg::F_ADD_SEALS(seals),
    )?;
    Ok(fd)
}

/// A new, empty anonymous in-memory file (`memfd_create`), closed on exec:
/// the master places it at a child's fixed descriptor when it spawns one.
pub fn anonymous_file(name: &std::ffi::CStr) -> io::Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    memfd_create(name, MemFdCreateFlag::MFD_CLOEXEC).map_err(io::Error::from)
}

/// Reads the settings a master stored for this child.
pub fn inherited_settings() -> io::Result<Settings> {
    let bytes = read_inherited(crate::sockets::SETTINGS_FD)?;
    serde_json::from_slice(&bytes).map_err(io::Error::other)
}

/// The whole content of a memfd the master placed at `fd`.
pub fn read_inherited(fd: std::os::fd::RawFd) -> io::Result<Vec<u8>> {
    use std::os::fd::BorrowedFd;
    use std::os::unix::fs::FileExt;
    // SAFETY: the master placed a memfd at this descriptor for this child.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let file = std::fs::File::from(fd.try_clone_to_owned()?);
    let len = file.metadata()?.len() as usize;
    let mut buf = vec![0u8; len];
    // Read by offset: siblings share the same open file description.
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    /// What a child gets is read-only for good: neither writing through
    /// its descriptor nor resizing the file changes what the next child
    /// reads.
    #[test]
    fn a_child_cannot_change_what_the_next_one_reads() {
        let fd = super::memfd("sandgnat-test", b"compiled rules").unwrap();
        let mut file = std::fs::File::from(fd.try_clone().unwrap());
        assert!(file.write_all(b"hostile").is_err(), "write through the fd");
        assert!(file.write_at(b"X", 0).is_err(), "write at an offset");
        assert!(file.set_len(0).is_err(), "truncate");
        assert!(file.set_len(1 << 20).is_err(), "grow");
        let mut buf = vec![0u8; 14];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, b"compiled rules");
    }
}
