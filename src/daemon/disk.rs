//! The output disk's free space: measured with statvfs; intake pauses under the configured minimum
//! (`min_free_bytes`, `min_free_percent`) and after a write failed for lack of space, until a
//! margin is free again.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::settings::DaemonSettings;
use crate::protocol::DiskInfo;

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
}
