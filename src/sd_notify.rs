//! systemd's service notification protocol, for units with `Type=notify`: `READY=1` once the node runs,
//! `WATCHDOG=1` at half the unit's `WatchdogSec` while the node's runtime answers, `STOPPING=1` when it begins
//! to stop. Without `NOTIFY_SOCKET` in the environment (not started by systemd) nothing is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sends `state` (for example `READY=1`) to the socket named by `NOTIFY_SOCKET`. Returns whether it was sent;
/// failures are logged once at DEBUG (a node must never stop because its supervisor went away).
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let sent = send(&path.to_string_lossy(), state);
    if let Err(e) = &sent {
        tracing::debug!(error = %e, state, "cannot notify systemd");
    }
    sent.is_ok()
}

fn send(path: &str, state: &str) -> std::io::Result<()> {
    let addr = match path.strip_prefix('@') {
        // A name in Linux's abstract socket namespace.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// The watchdog period asked for by systemd (`WATCHDOG_USEC`, for this process when `WATCHDOG_PID` is set).
pub fn watchdog_period() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_string_lossy().trim() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` every half period until `cancel`. It runs on the node's runtime, so a runtime that no
/// longer schedules tasks stops the pings and systemd restarts the node.
pub async fn watchdog(period: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(period / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                notify("WATCHDOG=1");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("harmonylite-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        assert!(send("/nonexistent/dir/notify", "READY=1").is_err());
    }
}
