//! The daemon run in-process on temporary folders with `PixelScreener`, a test double that
//! derives a finding from pixel statistics (no model): it exercises the queue, watcher, outputs,
//! series, socket and operations; real-model tests live with the screener.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::settings::PollMode;
use super::*;
use crate::protocol::{Client, Message, Request, fetch_snapshot};
use crate::slice::Slice;
use crate::structures::{Classification, Finding, Lesion};

/// Test double: bright slices are "covid", pixels above 200 are GGO. A slice whose first pixel
/// is 13 panics, 7 returns an error; `delay` simulates model time.
struct PixelScreener {
    calls: Arc<AtomicUsize>,
    delay: Duration,
    /// A "broken device": every slice fails while set.
    broken: Arc<AtomicBool>,
}

impl Screener for PixelScreener {
    fn screen_batch(&mut self, slices: &[Slice]) -> Vec<Result<Finding, String>> {
        self.calls.fetch_add(slices.len(), Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if slices.iter().any(|s| s.rgb.first() == Some(&13)) {
            panic!("test double told to panic");
        }
        if self.broken.load(Ordering::SeqCst) {
            return slices
                .iter()
                .map(|_| Err("CUDA error: device lost (test double)".into()))
                .collect();
        }
        slices.iter().map(pixel_finding).collect()
    }

    fn model_identity(&self) -> Vec<(String, String)> {
        vec![("pixel-test-double".into(), "00".repeat(32))]
    }

    fn device(&self) -> String {
        "cpu".into()
    }
}

fn pixel_finding(s: &Slice) -> Result<Finding, String> {
    if s.rgb.first() == Some(&7) {
        return Err("test double told to fail".into());
    }
    let mean = s.rgb.iter().map(|&v| f64::from(v)).sum::<f64>() / s.rgb.len().max(1) as f64;
    let label_mask: Vec<u8> = s.rgb.chunks(3).map(|p| u8::from(p[0] > 200)).collect();
    let ggo = label_mask.iter().filter(|&&v| v == 1).count() as u64;
    let covid = mean > 128.0;
    Ok(Finding {
        classification: Some(Classification {
            label: if covid { "covid" } else { "control" }.into(),
            probabilities: if covid { [0.1, 0.1, 0.8] } else { [0.8, 0.1, 0.1] },
            logits: [0.0; 3],
            no_detections: ggo == 0,
        }),
        lesions: (ggo > 0)
            .then(|| Lesion {
                class: "ggo".into(),
                label: 1,
                score: 0.9,
                bbox: [0.0, 0.0, 4.0, 4.0],
                area_px: ggo,
                area_mm2: None,
                lung_fraction: None,
                outside_lung: false,
            })
            .into_iter()
            .collect(),
        lung_field_px: Some(u64::from(s.width * s.height)),
        width: s.width,
        height: s.height,
        overlay_rgb: s.rgb.clone(),
        label_mask,
        device: "cpu".into(),
        timings_ms: [("segment".to_string(), 1.0)].into(),
        ..Finding::default()
    })
}

fn png(value: u8) -> Vec<u8> {
    let mut buf = Vec::new();
    let img = image::GrayImage::from_pixel(8, 8, image::Luma([value]));
    img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .expect("encode png");
    buf
}

/// Writes `bytes` as `name` the way scanners should: a temporary name, then a rename.
fn drop_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let tmp = dir.join(format!("{name}.part"));
    std::fs::write(&tmp, bytes).expect("write");
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).expect("rename");
    path
}

fn settings(root: &Path) -> DaemonSettings {
    let s = DaemonSettings {
        watch: vec![root.join("in")],
        output: root.join("out"),
        state: root.join("state"),
        socket: root.join("run/ctmask.sock"),
        poll: PollMode::Inotify,
        poll_interval_s: 0.1,
        rescan_interval_s: 1.0,
        settle_ms: 20,
        quiet_period_s: 0.4,
        retries: 1,
        backoff_s: 0.1,
        backoff_max_s: 0.2,
        min_free_bytes: 0,
        min_free_percent: 0.0,
        disk_check_interval_s: 0.1,
        drain_timeout_s: 5.0,
        ..DaemonSettings::default()
    };
    std::fs::create_dir_all(&s.watch[0]).expect("watch dir");
    s
}

struct Running {
    signal: Shutdown,
    handle: JoinHandle<Result<(), DaemonError>>,
    calls: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
    socket: PathBuf,
}

impl Running {
    fn stop(self) -> usize {
        self.signal.trigger();
        self.handle.join().expect("daemon thread").expect("daemon result");
        self.calls.load(Ordering::SeqCst)
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket, Some(Duration::from_secs(5))).expect("connect")
    }
}

fn start(settings: DaemonSettings, delay: Duration) -> Running {
    let calls = Arc::new(AtomicUsize::new(0));
    let broken = Arc::new(AtomicBool::new(false));
    let signal = Shutdown::new();
    let socket = settings.socket.clone();
    let make: MakeScreener = {
        let (calls, broken) = (calls.clone(), broken.clone());
        Box::new(move || Ok(Box::new(PixelScreener { calls, delay, broken }) as Box<dyn Screener>))
    };
    let handle = {
        let signal = signal.clone();
        std::thread::spawn(move || run(settings, make, signal))
    };
    assert!(
        wait_until(Duration::from_secs(10), || socket.exists()),
        "daemon did not come up"
    );
    Running {
        signal,
        handle,
        calls,
        broken,
        socket,
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    cond()
}

fn files_named(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for series in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(series.path()).into_iter().flatten().flatten() {
            if f.file_name().to_string_lossy().ends_with(suffix) {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

fn series_reports(out: &Path) -> Vec<PathBuf> {
    files_named(out, "series.json")
}

fn slice_reports(out: &Path) -> Vec<PathBuf> {
    files_named(out, ".json")
        .into_iter()
        .filter(|p| !p.ends_with("series.json"))
        .collect()
}

fn shared_dicom(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        root.join("../shared/data/dicom"),
        root.join("../../shared/data/dicom"),
    ]
    .into_iter()
    .map(|d| d.join(name))
    .find(|p| p.is_file())
    .expect("shared/data/dicom must sit beside the repository")
}

#[test]
fn screens_slices_reports_series_and_never_rescreens_copies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = settings(tmp.path());
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    // Present before start: the start-up scan takes them together (one series report each).
    drop_file(&watch, "a.png", &png(250));
    drop_file(&watch, "b.png", &png(251)); // same content as a.png would be one job
    drop_file(&watch, "c.png", &png(20));
    std::fs::copy(
        shared_dicom("chest_ct1_128_crop_explicit_le.dcm"),
        watch.join("ct.dcm"),
    )
    .expect("copy dicom");
    let d = start(s.clone(), Duration::ZERO);
    assert!(
        wait_until(Duration::from_secs(10), || series_reports(&out).len() == 2
            && slice_reports(&out).len() == 4),
        "reports missing: {:?}",
        files_named(&out, "")
    );
    assert_eq!(files_named(&out, "_mask.png").len(), 4);
    assert_eq!(files_named(&out, "_overlay.png").len(), 4);

    let reports: Vec<serde_json::Value> = series_reports(&out).iter().map(|p| json(p)).collect();
    let loose = reports
        .iter()
        .find(|r| r["series_key"].as_str().is_some_and(|k| k.starts_with("dir-")))
        .expect("png series");
    assert_eq!(loose["schema"], series::SeriesReport::SCHEMA);
    assert_eq!(
        (loose["slice_count"].as_u64(), loose["revision"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(loose["counts"]["covid"], 2);
    assert_eq!(loose["verdict"]["rule"], "covid_fraction");
    assert_eq!(loose["verdict"]["label"], "covid", "2 of 3 slices >= 10 %");
    let ct = reports
        .iter()
        .find(|r| r["series_uid"].is_string())
        .expect("dicom series keyed by its UID");
    assert_eq!(ct["slice_count"], 1);
    let ct_slice = json(
        &out.join(ct["series_key"].as_str().expect("key"))
            .join(ct["slices"][0]["report"].as_str().expect("name")),
    );
    assert_eq!(ct_slice["input"]["format"], "dicom");
    assert_eq!(ct_slice["research_use_only"], true);
    assert_eq!(ct_slice["disclaimer"], crate::DISCLAIMER);
    assert!(ct_slice["input"]["sop_uid"].is_string() && ct_slice["input"]["pixel_spacing"].is_array());
    assert!(
        !std::fs::read_to_string(&slice_reports(&out)[0])
            .expect("read")
            .to_lowercase()
            .contains("patient")
    );

    // A copy and a rename of screened content are not screened again; a late slice re-reports.
    std::fs::copy(watch.join("a.png"), watch.join("a-copy.png")).expect("copy");
    std::fs::rename(watch.join("b.png"), watch.join("b2.png")).expect("rename");
    drop_file(&watch, "late.png", &png(30));
    let loose_path = out
        .join(loose["series_key"].as_str().expect("key"))
        .join(series::SERIES_FILE);
    assert!(
        wait_until(Duration::from_secs(10), || json(&loose_path)["revision"] == 2),
        "late slice not re-reported"
    );
    assert_eq!(json(&loose_path)["slice_count"], 4);
    std::thread::sleep(Duration::from_millis(300));
    let snapshot = fetch_snapshot(&d.socket).expect("status");
    assert_eq!(
        (
            snapshot.counts.done,
            snapshot.counts.pending,
            snapshot.counts.quarantined
        ),
        (5, 0, 0)
    );
    assert_eq!(snapshot.models[0].name, "pixel-test-double");
    let Message::Results(results) = d
        .client()
        .request(&Request::Recent { limit: 10, offset: 0 })
        .expect("recent")
    else {
        panic!("not results")
    };
    assert_eq!(results.slices.len(), 5);
    assert!(results.slices.iter().all(|s| s.thumbnail.is_some()));
    assert_eq!(results.series.len(), 2);
    let key = loose["series_key"].as_str().expect("key").to_string();
    let Message::Results(one) = d
        .client()
        .request(&Request::Series {
            key: key.clone(),
            offset: 0,
            limit: None,
        })
        .expect("series")
    else {
        panic!("not results")
    };
    assert_eq!((one.series.len(), one.slices.len()), (1, 4));
    assert_eq!(one.series[0].key, key);
    assert!(
        d.client()
            .request(&Request::Series {
                key: "nope".into(),
                offset: 0,
                limit: None,
            })
            .is_err()
    );
    assert_eq!(d.stop(), 5, "screened exactly once each");

    // Restart: nothing is screened again.
    let d = start(s, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(fetch_snapshot(&d.socket).expect("status").counts.done, 5);
    assert_eq!(d.stop(), 0);
}

#[test]
fn bad_files_are_quarantined_while_good_ones_are_screened() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = DaemonSettings {
        max_file_bytes: 100_000,
        show_input_paths: true, // jobs found by name below (relative to the watch folder)
        ..settings(tmp.path())
    };
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    let d = start(s, Duration::ZERO);
    let good = png(250);
    drop_file(&watch, "empty.png", b"");
    drop_file(&watch, "garbage.dcm", b"this is not an image at all");
    drop_file(&watch, "truncated.png", &good[..good.len() / 2]);
    drop_file(&watch, "huge.dcm", &vec![1u8; 100_001]);
    std::fs::copy(shared_dicom("mr_64_explicit_le.dcm"), watch.join("mr.dcm")).expect("copy mr");
    drop_file(&watch, "panics.png", &png(13));
    drop_file(&watch, "fails.png", &png(7));
    drop_file(&watch, "good.png", &good);
    let mut client = d.client();
    let quarantined = |c: &mut Client| match c.request(&Request::Status) {
        Ok(Message::Snapshot(s)) => s,
        other => panic!("no snapshot: {other:?}"),
    };
    assert!(
        wait_until(Duration::from_secs(10), || quarantined(&mut client)
            .counts
            .quarantined
            == 7),
        "{:?}",
        quarantined(&mut client).jobs
    );
    let snap = quarantined(&mut client);
    assert_eq!(snap.counts.done, 1);
    let reason = |name: &str| {
        snap.jobs
            .iter()
            .find(|j| j.path.ends_with(name))
            .and_then(|j| j.reason.clone())
            .unwrap_or_default()
    };
    assert_eq!(reason("empty.png"), "empty file");
    assert!(
        reason("garbage.dcm").starts_with("unknown format"),
        "{}",
        reason("garbage.dcm")
    );
    assert!(
        reason("truncated.png").starts_with("corrupt"),
        "{}",
        reason("truncated.png")
    );
    assert!(
        reason("huge.dcm").starts_with("file too large"),
        "{}",
        reason("huge.dcm")
    );
    assert_eq!(reason("mr.dcm"), "not CT: modality MR");
    assert!(
        reason("panics.png").contains("screener panicked: test double told to panic"),
        "{}",
        reason("panics.png")
    );
    assert!(
        reason("fails.png").contains("test double told to fail"),
        "{}",
        reason("fails.png")
    );
    let fails = snap
        .jobs
        .iter()
        .find(|j| j.path.ends_with("fails.png"))
        .expect("job");
    assert_eq!(fails.attempts, 2, "one retry after the first failure");
    assert_eq!(slice_reports(&out).len(), 1);

    // The operator retries a quarantined job; unknown ids are refused.
    assert!(matches!(
        client.request(&Request::Retry { job_id: fails.id }),
        Ok(Message::Ack { .. })
    ));
    assert!(client.request(&Request::Retry { job_id: 9999 }).is_err());
    assert!(wait_until(Duration::from_secs(5), || quarantined(&mut client)
        .jobs
        .iter()
        .any(|j| j.id == fails.id && j.attempts == 2)));
    d.stop();
}

#[test]
fn pause_resume_events_and_socket_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = settings(tmp.path());
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    let d = start(s, Duration::ZERO);
    let mode = std::fs::metadata(&d.socket).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let mut events = d.client();
    events.send(&Request::Subscribe).expect("subscribe");
    let mut client = d.client();
    assert!(matches!(client.request(&Request::Pause), Ok(Message::Ack { .. })));
    drop_file(&watch, "a.png", &png(250));
    let mut status = || match client.request(&Request::Status) {
        Ok(Message::Snapshot(s)) => s,
        other => panic!("no snapshot: {other:?}"),
    };
    assert!(wait_until(Duration::from_secs(5), || status().counts.pending == 1));
    std::thread::sleep(Duration::from_millis(300));
    let Ok(Message::Snapshot(snap)) = client.request(&Request::Status) else {
        panic!("no snapshot")
    };
    assert!(snap.intake.paused && snap.intake.reasons == ["paused by operator"]);
    assert_eq!(
        (snap.counts.pending, snap.counts.done),
        (1, 0),
        "queued but not screened while paused"
    );
    assert!(slice_reports(&out).is_empty());
    assert!(matches!(
        client.request(&Request::Resume),
        Ok(Message::Ack { .. })
    ));
    assert!(wait_until(Duration::from_secs(5), || slice_reports(&out).len() == 1));
    let mut kinds = Vec::new();
    while !kinds.contains(&EventKind::Done) {
        match events.next_message().expect("event") {
            Message::Event(e) => kinds.push(e.kind),
            other => panic!("unexpected {other:?}"),
        }
    }
    for k in [
        EventKind::DaemonStarted,
        EventKind::IntakePaused,
        EventKind::Queued,
        EventKind::IntakeResumed,
    ] {
        assert!(kinds.contains(&k), "{k:?} missing from {kinds:?}");
    }
    // Garbage and a missing hello get errors, not a dropped daemon.
    let mut raw = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
    std::io::Write::write_all(&mut raw, b"{\"type\":\"status\"}\nnot json\n").expect("write");
    let mut reader = std::io::BufReader::new(raw);
    let first: Option<Message> = crate::protocol::read_message(&mut reader).expect("reply");
    assert!(matches!(first, Some(Message::Error { ref code, .. }) if code == "hello_required"));
    let second: Option<Message> = crate::protocol::read_message(&mut reader).expect("reply");
    assert!(matches!(second, Some(Message::Error { ref code, .. }) if code == "bad_request"));
    d.stop();
    assert!(
        !tmp.path().join("run/ctmask.sock").exists(),
        "socket removed on exit"
    );
}

#[test]
fn low_disk_pauses_intake_until_space_returns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = DaemonSettings {
        min_free_bytes: u64::MAX,
        ..settings(tmp.path())
    };
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    let d = start(s.clone(), Duration::ZERO);
    drop_file(&watch, "a.png", &png(250));
    std::thread::sleep(Duration::from_millis(800));
    let snap = fetch_snapshot(&d.socket).expect("status");
    assert!(snap.intake.paused);
    assert!(
        snap.intake.reasons[0].starts_with("low disk space on"),
        "{:?}",
        snap.intake.reasons
    );
    assert!(snap.disk.is_some_and(|disk| disk.free_bytes > 0));
    assert!(
        std::fs::read_dir(&out).expect("out").next().is_none(),
        "nothing written while the disk is low"
    );
    // Space "returns": the threshold drops on reload (SIGHUP in production).
    d.signal.set_reloader(Box::new(move || {
        Ok(DaemonSettings {
            min_free_bytes: 0,
            ..s.clone()
        })
    }));
    d.signal.request_reload();
    assert!(
        wait_until(Duration::from_secs(5), || slice_reports(&out).len() == 1),
        "not resumed"
    );
    assert!(!fetch_snapshot(&d.socket).expect("status").intake.paused);
    d.stop();
}

#[test]
fn second_instance_is_refused_and_drain_requeues_the_slice_in_hand() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = DaemonSettings {
        drain_timeout_s: 0.1,
        batch_size: 1,
        ..settings(tmp.path())
    };
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    let d = start(s.clone(), Duration::from_millis(600));
    let other = DaemonSettings {
        socket: tmp.path().join("run/other.sock"),
        ..s.clone()
    };
    let make: MakeScreener = Box::new(|| Err("must not be built".into()));
    let err = run(other, make, Shutdown::new()).expect_err("second instance");
    assert!(err.to_string().contains("another ctmask daemon"), "{err}");

    for i in 0..3 {
        drop_file(&watch, &format!("{i}.png"), &png(100 + i));
    }
    assert!(
        wait_until(Duration::from_secs(5), || d.calls.load(Ordering::SeqCst) >= 1),
        "screening never started"
    );
    d.stop(); // SIGTERM in production: returns after drain_timeout_s although the model is busy
    let done_before = slice_reports(&out).len();
    assert!(done_before < 3, "drain should interrupt the run");
    std::thread::sleep(Duration::from_millis(700)); // the abandoned model call ends
    let d = start(s, Duration::ZERO);
    assert!(
        wait_until(Duration::from_secs(10), || slice_reports(&out).len() == 3),
        "requeued slices not finished"
    );
    d.stop();
    let names: Vec<String> = slice_reports(&out)
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "exactly one report per slice: {names:?}");
}

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
            Ok(DaemonSettings {
                min_free_bytes: 0,
                ..s.clone()
            })
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

#[path = "tests_hostile.rs"]
mod hostile;
