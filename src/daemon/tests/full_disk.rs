//! The output folder on a real, small tmpfs: a full disk pauses intake, leaves nothing partial,
//! spends no try, and screening resumes when space returns. Helpers come from `mod.rs`.

use super::*;

/// A small tmpfs mounted on a folder for one test, unmounted (lazily) on drop. `None` where this
/// process may not mount (not root, no CAP_SYS_ADMIN).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0755"))
            .arg("tmpfs")
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn free(&self) -> u64 {
        disk::disk_info(&self.0).expect("statvfs").free_bytes
    }

    /// Writes zeros into `name` until the filesystem has at most `leave` bytes free.
    fn fill(&self, name: &str, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.0.join(name);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("filler");
        let chunk = vec![0u8; 4096];
        while self.free() > leave {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Files in `out` (series folders included) that are temporary or empty: partial writes.
fn partial_files(out: &Path) -> Vec<PathBuf> {
    let mut bad = Vec::new();
    for series in std::fs::read_dir(out).into_iter().flatten().flatten() {
        if !series.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(series.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            let empty = f.metadata().is_ok_and(|m| m.len() == 0);
            if name.starts_with('.') || name.contains(".tmp") || empty {
                bad.push(f.path());
            }
        }
    }
    bad
}

/// The output folder on a real 4 MB tmpfs: the free-space threshold pauses intake when the disk
/// fills, and with no threshold a write that fails with ENOSPC pauses it too; nothing partial is
/// left, no try is spent, and screening resumes by itself when space returns.
#[test]
fn real_full_disk_pauses_leaves_nothing_partial_and_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(fs) = Tmpfs::mount(&tmp.path().join("out"), 4 << 20) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)");
        return;
    };
    let s = DaemonSettings {
        min_free_bytes: 512 << 10,
        retries: 0, // a disk-full write must not spend a try: one would quarantine the slice
        ..settings(tmp.path())
    };
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    let d = start(s.clone(), Duration::ZERO);
    drop_file(&watch, "a.png", &png(250));
    assert!(wait_until(Duration::from_secs(10), || slice_reports(&out).len() == 1));

    // 1. The threshold: fill to 256 KiB free; intake pauses and b waits.
    let filler = fs.fill("filler", 256 << 10);
    assert!(
        wait_until(Duration::from_secs(5), || fetch_snapshot(&d.socket)
            .is_ok_and(|s| s.intake.paused)),
        "intake did not pause on a full tmpfs"
    );
    drop_file(&watch, "b.png", &png(240));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(slice_reports(&out).len(), 1, "b screened on a full disk");
    std::fs::remove_file(&filler).expect("free space");
    assert!(
        wait_until(Duration::from_secs(10), || slice_reports(&out).len() == 2),
        "b not screened after space returned"
    );

    // 2. No threshold: the disk fills completely and the write of c fails with ENOSPC.
    d.signal.set_reloader(Box::new({
        let s = s.clone();
        move || {
            Ok(reloaded(DaemonSettings {
                min_free_bytes: 0,
                ..s.clone()
            }))
        }
    }));
    d.signal.request_reload();
    std::thread::sleep(Duration::from_millis(300));
    let filler = fs.fill("filler", 0);
    assert_eq!(fs.free(), 0, "tmpfs not full");
    drop_file(&watch, "c.png", &png(230));
    let reasons = || {
        fetch_snapshot(&d.socket)
            .map(|s| s.intake.reasons)
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(10), || reasons()
            .iter()
            .any(|r| r.starts_with("output disk full on"))),
        "no disk-full alert: {:?}",
        reasons()
    );
    assert_eq!(slice_reports(&out).len(), 2, "c reported on a full disk");
    assert!(
        partial_files(&out).is_empty(),
        "partial files: {:?}",
        partial_files(&out)
    );
    let snap = fetch_snapshot(&d.socket).expect("status");
    assert_eq!(snap.counts.quarantined, 0, "a full disk quarantined the slice");
    std::fs::remove_file(&filler).expect("free space");
    assert!(
        wait_until(Duration::from_secs(10), || slice_reports(&out).len() == 3),
        "c not screened after space returned"
    );
    assert!(!fetch_snapshot(&d.socket).expect("status").intake.paused);
    assert!(
        partial_files(&out).is_empty(),
        "partial files: {:?}",
        partial_files(&out)
    );
    for r in slice_reports(&out) {
        let j = json(&r);
        assert_eq!(j["research_use_only"], true, "{}", r.display());
    }
    d.stop();
}
