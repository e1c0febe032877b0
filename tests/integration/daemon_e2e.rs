//! The daemon with the real model (tiny configuration, deterministic weights): a synthetic DICOM
//! series, a PNG and bad files dropped into a watch folder give every report, mask and overlay
//! and the series report, and bad files end quarantined with their reasons; and the process
//! killed with SIGKILL at random points twenty times still ends with exactly one whole report
//! per slice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ctmask::data::synth::{ClassChoice, Layout, SynthOptions, run_synth};
use ctmask::model::{MaskRcnn, deterministic_init};

use super::common::tiny_config;

/// Tiny segmentation + classifier model files in `dir`.
pub fn tiny_models(dir: &Path) -> (PathBuf, PathBuf) {
    let seg = MaskRcnn::new(&tiny_config(), tch::Device::Cpu).unwrap();
    deterministic_init::fill(&seg);
    let cls = MaskRcnn::new(&tiny_config().into_classifier(16, 32), tch::Device::Cpu).unwrap();
    deterministic_init::fill(&cls);
    let (s, c) = (dir.join("seg.safetensors"), dir.join("cls.safetensors"));
    seg.save(&s, &BTreeMap::new()).unwrap();
    cls.save(&c, &BTreeMap::new()).unwrap();
    (s, c)
}

pub fn config(dir: &Path, seg: &Path, cls: &Path) -> PathBuf {
    let yaml = format!(
        "models:\n  segmentation: {}\n  classifier: {}\ndaemon:\n  watch: [{}]\n  output: {}\n  state: {}\n  socket: {}\n  quiet_period_s: 1.0\n  poll_interval_s: 0.2\n  min_free_bytes: 0\n  min_free_percent: 0.0\n  device: cpu\n  retries: 0\n",
        seg.display(),
        cls.display(),
        dir.join("in").display(),
        dir.join("out").display(),
        dir.join("state").display(),
        dir.join("d.sock").display()
    );
    let p = dir.join("ctmask.yaml");
    std::fs::create_dir_all(dir.join("in")).unwrap();
    std::fs::write(&p, yaml).unwrap();
    p
}

pub fn series(dir: &Path, n: usize, seed: u64) -> Vec<PathBuf> {
    let out = dir.join(format!("staging{seed}"));
    run_synth(&SynthOptions {
        out: out.clone(),
        layout: Layout::Dicom,
        count: n,
        seed,
        class: ClassChoice::Covid,
        size: 96,
        preview: false,
        zoom: 0.0,
    })
    .unwrap();
    let mut v = Vec::new();
    for d in std::fs::read_dir(&out).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            v.push(f.path());
        }
    }
    v.sort();
    v
}

/// Slice reports (JSON, not series.json) under `out`.
fn reports(out: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(out).into_iter().flatten().flatten() {
        if d.path().is_dir() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                let p = f.path();
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                if name.ends_with(".json") && name != "series.json" && !name.starts_with('.') {
                    v.push(p);
                }
            }
        }
    }
    v
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn series_png_and_bad_files_with_the_real_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (seg, cls) = tiny_models(d);
    let cfg_path = config(d, &seg, &cls);
    let cfg = ctmask::config::Config::load(&cfg_path).unwrap();
    let shutdown = ctmask::daemon::Shutdown::new();
    let s2 = shutdown.clone();
    let screener = ctmask::cli::daemon::make_screener(&cfg);
    let (settings, slice) = (cfg.daemon.clone(), cfg.slice.clone());
    let h = std::thread::spawn(move || ctmask::daemon::run(settings, slice, screener, s2));
    let inbox = d.join("in");
    let files = series(d, 3, 5);
    for (i, f) in files.iter().enumerate() {
        std::fs::copy(f, inbox.join(format!("s{i}.dcm"))).unwrap();
    }
    let png = image::GrayImage::from_fn(80, 80, |x, y| image::Luma([((x * 3 + y) % 200) as u8]));
    png.save(inbox.join("slice.png")).unwrap();
    std::fs::write(inbox.join("empty.dcm"), b"").unwrap();
    std::fs::copy(
        super::common::shared().join("data/dicom/mr_64_explicit_le.dcm"),
        inbox.join("mr.dcm"),
    )
    .unwrap();
    let out = d.join("out");
    wait_for("4 reports", Duration::from_secs(120), || reports(&out).len() == 4);
    wait_for("the series report", Duration::from_secs(60), || {
        std::fs::read_dir(&out).unwrap().flatten().any(|e| {
            std::fs::read_to_string(e.path().join("series.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|j| {
                    j.to_string().contains("\"slice_count\":3")
                        || j["slices"].as_array().is_some_and(|a| a.len() == 3)
                })
        })
    });
    for r in reports(&out) {
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&r).unwrap()).unwrap();
        assert_eq!(j["research_use_only"], true);
        assert!(j["schema"].as_str().unwrap().starts_with("ctmask.slice/"));
        let probs = j["classification"]["probabilities"].as_array().unwrap();
        assert_eq!(probs.len(), 3);
        assert!(["control", "pneumonia", "covid"].contains(&j["classification"]["label"].as_str().unwrap()));
        assert_eq!(j["models"].as_array().unwrap().len(), 2);
        assert!(j["input"]["sha256"].as_str().unwrap().len() == 64);
        let stem = r.file_stem().unwrap().to_string_lossy().to_string();
        let mask = image::open(r.with_file_name(format!("{stem}_mask.png")))
            .unwrap()
            .to_luma8();
        assert!(mask.pixels().all(|p| p.0[0] <= 2));
        assert!(r.with_file_name(format!("{stem}_overlay.png")).exists());
        let text = std::fs::read_to_string(&r).unwrap();
        assert!(
            !text.contains("SYNTHETIC^PHANTOM") && !text.contains("\"SYNTH\""),
            "no patient data in reports"
        );
    }
    // bad files are quarantined with their reasons while the good ones were screened
    let snap = ctmask::protocol::fetch_snapshot(&cfg.daemon.socket).unwrap();
    assert_eq!(snap.counts.done, 4);
    assert_eq!(snap.counts.quarantined, 2, "{:?}", snap.jobs);
    let reasons: Vec<String> = snap.jobs.iter().filter_map(|j| j.reason.clone()).collect();
    assert!(reasons.iter().any(|r| r.contains("empty")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("not CT: modality MR")),
        "{reasons:?}"
    );
    shutdown.trigger();
    h.join().unwrap().unwrap();
}

#[test]
fn sigkill_twenty_times_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (seg, cls) = tiny_models(d);
    let cfg_path = config(d, &seg, &cls);
    // A try is counted when a job is claimed, so every kill charges the jobs in hand (a kill is
    // indistinguishable from a slice that crashed the process): allow more tries than kills.
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("retries: 0", "retries: 30");
    std::fs::write(&cfg_path, text).unwrap();
    let inbox = d.join("in");
    let files = series(d, 12, 9);
    for (i, f) in files.iter().enumerate() {
        std::fs::copy(f, inbox.join(format!("s{i:02}.dcm"))).unwrap();
    }
    // Poison in the mix: a corrupt DICOM, a link to /dev/zero and a FIFO (refused or ignored).
    let mut corrupt = std::fs::read(&files[0]).unwrap();
    corrupt.truncate(corrupt.len() / 2);
    std::fs::write(inbox.join("poison.dcm"), corrupt).unwrap();
    std::os::unix::fs::symlink("/dev/zero", inbox.join("zero.dcm")).unwrap();
    let fifo = std::ffi::CString::new(inbox.join("fifo.dcm").into_os_string().into_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let exe = env!("CARGO_BIN_EXE_ctmask");
    let out = d.join("out");
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for round in 0..20 {
        let mut child = std::process::Command::new(exe)
            .args(["daemon", "--config"])
            .arg(&cfg_path)
            .env("RUST_LOG", "error")
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(300 + rng % 900));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if reports(&out).len() == files.len() && round >= 5 {
            break;
        }
    }
    // a last, clean run finishes whatever is left
    let mut child = std::process::Command::new(exe)
        .args(["daemon", "--config"])
        .arg(&cfg_path)
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    wait_for("every slice reported", Duration::from_secs(180), || {
        reports(&out).len() == files.len()
    });
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let all = reports(&out);
    assert_eq!(all.len(), files.len(), "exactly one report per slice");
    for r in &all {
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(r).unwrap()).expect("no partial report");
        assert_eq!(j["research_use_only"], true);
    }
    let sops: std::collections::BTreeSet<String> = all
        .iter()
        .map(|r| r.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(sops.len(), files.len());
    // no temporary files left anywhere in the output
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        for f in std::fs::read_dir(e.path()).unwrap().flatten() {
            assert!(
                !f.file_name().to_string_lossy().starts_with('.'),
                "leftover {:?}",
                f.path()
            );
        }
    }
}
