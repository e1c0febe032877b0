//! systemd's notify protocol, spoken directly on `$NOTIFY_SOCKET`: READY, STATUS, STOPPING and the
//! watchdog's pings (every half `WatchdogSec`); all no-ops outside systemd.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

/// Whether the process runs under systemd (its journal or notify socket is set).
pub fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some() || std::env::var_os("JOURNAL_STREAM").is_some()
}

/// Sends one sd_notify message (`READY=1`, `STATUS=...`); a no-op outside systemd.
pub fn sd_notify(state: &str) {
    if let Some(addr) = std::env::var_os("NOTIFY_SOCKET")
        && let Err(e) = sd_notify_to(&addr, state)
    {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Sends `state` to a notify socket address (a path, or `@name` for an abstract socket).
pub fn sd_notify_to(addr: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = addr.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &a)?;
    } else {
        sock.send_to(state.as_bytes(), Path::new(addr))?;
    }
    Ok(())
}

/// The watchdog ping interval (half of `WatchdogSec`) when systemd asks for pings.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_notify_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        sd_notify_to(path.as_os_str(), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        server
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }
}
