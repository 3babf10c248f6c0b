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

/// An anonymous in-memory file holding `bytes`, for children to read.
pub fn memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    use std::io::Write;
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    let fd = anonymous_file(&name)?;
    std::fs::File::from(fd.try_clone()?).write_all(bytes)?;
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
