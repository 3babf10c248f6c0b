//! The systemd notification protocol (`sd_notify`): readiness, reloads,
//! stopping, main-pid hand-over on upgrade, and watchdog pings. Without
//! `NOTIFY_SOCKET` every call is a no-op, so the same binary runs anywhere.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket: the name starts with a NUL byte.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, state, "sd_notify failed");
    }
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
