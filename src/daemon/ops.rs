//! Operating the daemon: the shutdown/reload signal (SIGTERM and SIGINT drain, SIGHUP reloads the
//! settings), systemd's notify protocol (READY, STATUS, STOPPING, WATCHDOG pings, spoken directly
//! on `$NOTIFY_SOCKET`), and the output disk's free space, under which intake pauses.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::settings::DaemonSettings;
use crate::protocol::DiskInfo;

/// Reads the settings again (SIGHUP); an `Err` keeps the old ones.
pub type Reloader = Box<dyn Fn() -> Result<DaemonSettings, String> + Send>;

/// Asks a running daemon to stop or to reload; cheap to clone, shared with signal handlers.
#[derive(Clone, Default)]
pub struct ShutdownSignal {
    shutdown: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    reloader: Arc<Mutex<Option<Reloader>>>,
}

impl ShutdownSignal {
    pub fn new() -> ShutdownSignal {
        ShutdownSignal::default()
    }

    /// Makes SIGTERM and SIGINT trigger the shutdown and SIGHUP request a reload.
    pub fn install_os_handlers(&self) -> std::io::Result<()> {
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, self.shutdown.clone())?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, self.reload.clone())?;
        Ok(())
    }

    /// What a reload reads (without one, SIGHUP only logs that nothing can be reloaded).
    pub fn set_reloader(&self, reloader: Reloader) {
        if let Ok(mut r) = self.reloader.lock() {
            *r = Some(reloader);
        }
    }

    pub fn trigger(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }

    pub fn is_triggered(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    pub fn request_reload(&self) {
        self.reload.store(true, Ordering::SeqCst);
    }

    /// If a reload was requested: the new settings (or why they could not be read).
    pub(crate) fn take_reload(&self) -> Option<Result<DaemonSettings, String>> {
        if !self.reload.swap(false, Ordering::SeqCst) {
            return None;
        }
        let guard = self.reloader.lock().ok()?;
        Some(match guard.as_ref() {
            Some(f) => f(),
            None => Err("no configuration source to reload from".into()),
        })
    }
}

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

/// Free and total space of the filesystem holding `path`.
pub fn disk_info(path: &Path) -> std::io::Result<DiskInfo> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statvfs writes into a zeroed struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    let (frsize, avail, blocks) = (st.f_frsize as u64, st.f_bavail as u64, st.f_blocks as u64);
    let total = blocks.saturating_mul(frsize);
    let free = avail.saturating_mul(frsize);
    Ok(DiskInfo {
        path: path.to_string_lossy().into_owned(),
        free_bytes: free,
        total_bytes: total,
        free_percent: if total == 0 {
            100.0
        } else {
            100.0 * free as f64 / total as f64
        },
    })
}

/// Why intake must pause for this disk, if it must.
/// After a write failed for lack of space, intake resumes once this many more bytes are free
/// than at the failure (a slice's outputs at 512x512 take about 0.5 MB).
pub const DISK_FULL_MARGIN: u64 = 1 << 20;

/// The alert while the output disk is full (a write failed with ENOSPC or EDQUOT).
pub fn disk_full_reason(disk: &DiskInfo, free_at_failure: u64) -> String {
    format!(
        "output disk full on {}: a write failed for lack of space ({} KiB free); intake resumes when {} KiB are free",
        disk.path,
        disk.free_bytes >> 10,
        (free_at_failure + DISK_FULL_MARGIN) >> 10
    )
}

pub fn disk_low_reason(disk: &DiskInfo, settings: &DaemonSettings) -> Option<String> {
    let low_bytes = disk.free_bytes < settings.min_free_bytes;
    let low_percent = disk.free_percent < settings.min_free_percent;
    (low_bytes || low_percent).then(|| {
        format!(
            "low disk space on {}: {} MiB free ({:.1} %), below min_free_bytes {} MiB or min_free_percent {} %",
            disk.path,
            disk.free_bytes >> 20,
            disk.free_percent,
            settings.min_free_bytes >> 20,
            settings.min_free_percent
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_thresholds_name_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = disk_info(dir.path()).expect("statvfs");
        assert!(disk.total_bytes > 0 && disk.free_bytes <= disk.total_bytes);
        let ok = DaemonSettings {
            min_free_bytes: 0,
            min_free_percent: 0.0,
            ..DaemonSettings::default()
        };
        assert_eq!(disk_low_reason(&disk, &ok), None);
        let greedy = DaemonSettings {
            min_free_bytes: u64::MAX,
            ..ok
        };
        let reason = disk_low_reason(&disk, &greedy).expect("low");
        assert!(
            reason.starts_with("low disk space on") && reason.contains("min_free_bytes"),
            "{reason}"
        );
    }

    #[test]
    fn signal_triggers_and_reloads() {
        let s = ShutdownSignal::new();
        assert!(s.take_reload().is_none());
        s.request_reload();
        assert!(matches!(s.take_reload(), Some(Err(_))), "no reloader set");
        s.set_reloader(Box::new(|| {
            Ok(DaemonSettings {
                batch_size: 9,
                ..DaemonSettings::default()
            })
        }));
        s.request_reload();
        assert_eq!(
            s.take_reload().and_then(Result::ok).map(|x| x.batch_size),
            Some(9)
        );
        let c = s.clone();
        c.trigger();
        assert!(s.is_triggered());
    }

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
