//! The systemd notification protocol (`sd_notify`): readiness, reloads,
//! stopping, main-pid hand-over on upgrade, and watchdog pings. Without
//! `NOTIFY_SOCKET` every call is a no-op, so the same binary runs anywhere.
//!
//! The master sends from its one loop, so a send never waits: a datagram
//! to a socket whose queue is full (the service manager busy or stuck)
//! would block until it drains, and with it the reaping, the respawns and
//! the watchdog pings. Such a message is dropped and logged; the next
//! state change or ping says the same again.

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    match send(&path, state) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            tracing::warn!(
                state,
                "the service manager's notification queue is full; message dropped"
            )
        }
        Err(e) => tracing::debug!(error = %e, state, "sd_notify failed"),
    }
}

/// One datagram to the socket at `path` (`@name`: an abstract one), or
/// `WouldBlock` at once when its queue is full.
fn send(path: &OsStr, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket: the name starts with a NUL byte.
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// How often to ping the watchdog, when systemd asked for one for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    // Half the deadline, as sd_watchdog_enabled(3) recommends.
    Some(Duration::from_micros(usec / 2))
}

/// `RELOADING=1` needs a timestamp since systemd 253.
pub fn reloading() {
    let usec = crate::scoreboard::monotonic().as_micros();
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver that reads nothing, its queue filled: a notification
    /// comes back at once, refused, instead of waiting for room.
    #[test]
    fn a_full_queue_drops_the_message_instead_of_waiting() {
        let dir = std::env::temp_dir().join(format!("sandgnat-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        assert_eq!(
            send(path.as_os_str(), "READY=1").map_err(|e| e.kind()),
            Ok(())
        );

        // A sender's own buffer may fill before the receiver's queue:
        // fresh senders until one cannot send even its first datagram.
        let mut full = false;
        for _ in 0..256 {
            let filler = UnixDatagram::unbound().unwrap();
            filler.set_nonblocking(true).unwrap();
            let mut sent = 0;
            loop {
                match filler.send_to(b"x", &path) {
                    Ok(_) => sent += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            if sent == 0 {
                full = true;
                break;
            }
        }
        assert!(full, "the receiver's queue never filled");

        let (tx, rx) = std::sync::mpsc::channel();
        let to = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(send(to.as_os_str(), "WATCHDOG=1").map_err(|e| e.kind()));
        });
        let sent = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the notification waited for room in the queue");
        assert_eq!(sent, Err(io::ErrorKind::WouldBlock));
        drop(receiver);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
