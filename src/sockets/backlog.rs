//! How many connections wait in a listening socket's accept queue, read from
//! the kernel: `TCP_INFO` for TCP, `sock_diag` netlink for Unix sockets.
//! A growing queue is the first sign that every worker is busy.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Connections waiting to be accepted on `fd`.
pub fn pending(fd: BorrowedFd<'_>, unix: bool) -> io::Result<u32> {
    if unix {
        unix_pending(fd)
    } else {
        tcp_pending(fd)
    }
}

fn tcp_pending(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: tcp_info is plain data; zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid pointers and length for TCP_INFO.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // For a listening socket the kernel reports the accept queue here.
    Ok(info.tcpi_unacked)
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_RQLEN: u16 = 4;

#[repr(C)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
struct UnixDiagReq {
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    ino: u32,
    show: u32,
    cookie: [u32; 2],
}

#[repr(C)]
struct Request {
    hdr: NlMsgHdr,
    req: UnixDiagReq,
}

fn unix_pending(fd: BorrowedFd<'_>) -> io::Result<u32> {
    unix_pending_by_inode(inode(fd)?)
}

/// The inode that names a socket to `unix_pending_by_inode`.
pub fn inode(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(nix::sys::stat::fstat(fd.as_raw_fd())
        .map_err(io::Error::from)?
        .st_ino as u32)
}

/// Connections waiting on the Unix listening socket with inode `ino`,
/// without holding a descriptor to it.
pub fn unix_pending_by_inode(ino: u32) -> io::Result<u32> {
    // SAFETY: plain socket(2).
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor we own.
    let nl = unsafe { OwnedFd::from_raw_fd(raw) };
    let request = Request {
        hdr: NlMsgHdr {
            len: std::mem::size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: libc::NLM_F_REQUEST as u16,
            seq: 1,
            pid: 0,
        },
        req: UnixDiagReq {
            family: libc::AF_UNIX as u8,
            protocol: 0,
            pad: 0,
            states: u32::MAX,
            ino,
            show: UDIAG_SHOW_RQLEN,
            // "No cookie": look the socket up by inode alone.
            cookie: [u32::MAX, u32::MAX],
        },
    };
    // SAFETY: sending a repr(C) struct of the stated size.
    let sent = unsafe {
        libc::send(
            nl.as_raw_fd(),
            (&request as *const Request).cast(),
            std::mem::size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: receiving into a buffer we own.
    let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_reply(&buf[..n as usize])
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn parse_reply(b: &[u8]) -> io::Result<u32> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short sock_diag reply");
    let len = u32_at(b, 0).ok_or_else(bad)? as usize;
    let kind = u16_at(b, 4).ok_or_else(bad)?;
    if kind == NLMSG_ERROR {
        let errno = u32_at(b, 16).ok_or_else(bad)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    // nlmsghdr (16) + unix_diag_msg (16), then attributes, 4-byte aligned.
    let mut at = 32;
    let end = len.min(b.len());
    while at + 4 <= end {
        let alen = u16_at(b, at).ok_or_else(bad)? as usize;
        let akind = u16_at(b, at + 2).ok_or_else(bad)?;
        if alen < 4 {
            break;
        }
        if akind == UNIX_DIAG_RQLEN {
            return u32_at(b, at + 4).ok_or_else(bad);
        }
        at += alen.next_multiple_of(4);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "sock_diag reply has no queue length",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn unix_queue_counts_unaccepted_connections() {
        let dir = std::env::temp_dir().join(format!("sandgnat-backlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(pending(listener.as_fd(), true).unwrap(), 0);
        let _a = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let _b = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert_eq!(pending(listener.as_fd(), true).unwrap(), 2);
        let _ = listener.accept().unwrap();
        assert_eq!(pending(listener.as_fd(), true).unwrap(), 1);
    }

    #[test]
    fn tcp_queue_counts_unaccepted_connections() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(pending(listener.as_fd(), false).unwrap(), 0);
        let _a = std::net::TcpStream::connect(addr).unwrap();
        let _b = std::net::TcpStream::connect(addr).unwrap();
        // The handshake completes in the kernel before connect returns.
        assert_eq!(pending(listener.as_fd(), false).unwrap(), 2);
    }
}
