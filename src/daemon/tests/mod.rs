//! The daemon run in-process on temporary folders with `PixelScreener`, a test double that
//! derives a finding from pixel statistics (no model): it exercises the queue, watcher, outputs,
//! series, socket and operations; real-model tests live with the screener. This file is the
//! harness; the tests are in `screening.rs`, `operations.rs`, `full_disk.rs` and `hostile.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::settings::PollMode;
use super::*;
use crate::config::SliceSettings;
use crate::findings::{Classification, Finding, Lesion};
use crate::protocol::{Client, Message, Request, fetch_snapshot};
use crate::slice::Slice;

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
                low_score: false,
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

/// What a reload reads when only the daemon block changes.
fn reloaded(daemon: DaemonSettings) -> Reloaded {
    Reloaded {
        daemon,
        slice: SliceSettings::default(),
        restart_keys: Vec::new(),
    }
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
        std::thread::spawn(move || run(settings, SliceSettings::default(), make, signal))
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

use crate::test_support::shared_dicom;

mod full_disk;
mod hostile;
mod operations;
mod screening;
