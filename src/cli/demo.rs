//! `ctmask demo` (what `make demo` runs): a temporary watch folder, the daemon screening it with
//! the demo weights, a synthetic DICOM series dropped in slice by slice, and a headless summary
//! of what the dashboard would show, read from the daemon's socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::{Config, ModelPaths};
use crate::daemon::ops::ShutdownSignal;
use crate::data::synth::{ClassChoice, Layout, SynthOptions, run_synth};
use crate::protocol::{Message, Request};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Folder of the demo weights (demo_segmentation.safetensors, demo_classifier.safetensors).
    #[arg(long, default_value = "pretrained_models")]
    pub models: PathBuf,
    /// Slices in the synthetic series.
    #[arg(long, default_value_t = 10)]
    pub slices: usize,
    /// Seed of the synthetic series.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Keep the demo folder (printed at the end) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
    /// Seconds to wait for the series report before giving up.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

pub(crate) fn find_models(dir: &Path) -> anyhow::Result<ModelPaths> {
    let candidates = [
        dir.to_path_buf(),
        std::env::current_exe()?
            .parent()
            .unwrap_or(Path::new("."))
            .join("../..")
            .join(dir),
    ];
    for d in candidates {
        let seg = d.join("demo_segmentation.safetensors");
        if seg.exists() {
            let cls = d.join("demo_classifier.safetensors");
            return Ok(ModelPaths {
                segmentation: seg,
                classifier: cls.exists().then_some(cls),
            });
        }
    }
    anyhow::bail!(
        "{}: no demo_segmentation.safetensors (run from the repository root)",
        dir.display()
    )
}

/// A daemon screening a temporary folder (`incoming/` watched, `results/`, `state/`, a socket)
/// on a thread of this process with the given models: what `demo` and `bench-daemon` drive.
/// Dropping it stops the daemon and deletes the folder (see [`TempDaemon::keep`]).
pub(crate) struct TempDaemon {
    root: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub watch: PathBuf,
    pub cfg: Config,
    shutdown: ShutdownSignal,
    handle: Option<std::thread::JoinHandle<Result<(), crate::daemon::DaemonError>>>,
}

impl TempDaemon {
    /// Writes the config (models, folders, no free-space limits, plus `daemon_yaml`: more lines
    /// of the daemon block, each `  key: value\n`) and starts the daemon.
    pub fn start(prefix: &str, models: &ModelPaths, daemon_yaml: &str) -> anyhow::Result<TempDaemon> {
        let root = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let dir = root.path().to_path_buf();
        let watch = dir.join("incoming");
        std::fs::create_dir_all(&watch)?;
        let yaml = format!(
            "models:\n  segmentation: {}\n  classifier: {}\ndaemon:\n  watch: [{}]\n  output: {}\n  state: {}\n  socket: {}\n  min_free_bytes: 0\n  min_free_percent: 0.0\n{daemon_yaml}",
            models.segmentation.display(),
            models
                .classifier
                .as_ref()
                .map_or("null".into(), |p| p.display().to_string()),
            watch.display(),
            dir.join("results").display(),
            dir.join("state").display(),
            dir.join("ctmask.sock").display(),
        );
        let cfg_path = dir.join("ctmask.yaml");
        std::fs::write(&cfg_path, yaml)?;
        let cfg = Config::load(&cfg_path)?;
        let shutdown = ShutdownSignal::new();
        let daemon_shutdown = shutdown.clone();
        let screener = super::daemon::make_screener(&cfg);
        let settings = cfg.daemon.clone();
        let handle = std::thread::spawn(move || crate::daemon::run(settings, screener, daemon_shutdown));
        Ok(TempDaemon {
            root: Some(root),
            dir,
            watch,
            cfg,
            shutdown,
            handle: Some(handle),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.cfg.daemon.socket
    }

    /// Waits until the daemon's socket exists; the daemon's own error when it stopped first.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while !self.socket().exists() {
            if self.handle.as_ref().is_none_or(|h| h.is_finished()) {
                if let Some(h) = self.handle.take() {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("the daemon thread panicked"))??;
                }
                anyhow::bail!("the daemon stopped at start-up");
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "no daemon socket after {} s",
                timeout.as_secs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the daemon and waits for its thread.
    pub fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }

    /// Stops the daemon and keeps the folder; returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.stop();
        self.root.take().map_or_else(|| self.dir.clone(), |r| r.keep())
    }
}

impl Drop for TempDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn run(a: &DemoArgs) -> anyhow::Result<()> {
    let models = find_models(&a.models)?;
    let mut daemon = TempDaemon::start(
        "ctmask-demo-",
        &models,
        "  quiet_period_s: 3.0\n  poll_interval_s: 0.5\n",
    )?;
    let (dir, watch) = (daemon.dir.clone(), daemon.watch.clone());
    println!("{}", crate::DISCLAIMER);
    println!("demo folder {}", dir.display());
    // a synthetic COVID series, dropped in slice by slice (written under a temporary name, renamed)
    let staging = dir.join("staging");
    let size = 256;
    run_synth(&SynthOptions {
        out: staging.clone(),
        layout: Layout::Dicom,
        count: a.slices,
        seed: a.seed,
        class: ClassChoice::Covid,
        size,
        preview: false,
    })?;
    let mut files: Vec<PathBuf> = walk(&staging);
    files.sort();
    let socket = daemon.socket().to_path_buf();
    let started = Instant::now();
    daemon.wait_ready(Duration::from_secs(60))?;
    for (i, f) in files.iter().enumerate() {
        let tmp = watch.join(format!(".slice{i}.part"));
        std::fs::copy(f, &tmp)?;
        std::fs::rename(&tmp, watch.join(format!("slice{i:03}.dcm")))?;
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "dropped {} DICOM slices into the watch folder; screening...",
        files.len()
    );
    let summary = loop {
        std::thread::sleep(Duration::from_millis(500));
        let mut client = crate::daemon::Client::connect(&socket, Some(Duration::from_secs(10)))
            .context("connecting to the demo daemon")?;
        // synthetic patients are series of five slices: wait until every slice is reported
        if let Message::Results(r) = client.request(&Request::Recent {
            limit: 100,
            offset: 0,
        })? && r.series.iter().map(|s| s.slice_count as usize).sum::<usize>() == files.len()
        {
            break (r.series, r.slices);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(a.timeout),
            "no series report after {} s",
            a.timeout
        );
    };
    let (series, mut slices) = summary;
    slices.sort_by(|x, y| {
        (x.series_key.as_str(), x.position_z.unwrap_or(0.0))
            .partial_cmp(&(y.series_key.as_str(), y.position_z.unwrap_or(0.0)))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    println!(
        "\n{:<6} {:>8} {:<10} {:>8} {:>8} {:>8} {:>6} {:>9}",
        "inst", "z (mm)", "label", "control", "pneum.", "covid", "GGO", "time ms"
    );
    for s in &slices {
        let p = s.probabilities.unwrap_or([f32::NAN; 3]);
        println!(
            "{:<6} {:>8.1} {:<10} {:>8.3} {:>8.3} {:>8.3} {:>6} {:>9.0}",
            s.instance_number.unwrap_or(0),
            s.position_z.unwrap_or(f64::NAN),
            s.label.clone().unwrap_or_default(),
            p[0],
            p[1],
            p[2],
            s.lesion_counts.values().sum::<u32>(),
            s.time_ms
        );
    }
    for series in &series {
        println!(
            "\nseries {}: {} slices, verdict {} ({})\nGGO {:.1} mL, consolidation {:.1} mL, lung involved {:.1} %",
            series.key,
            series.slice_count,
            series.verdict,
            series.rule,
            series.ggo_ml.unwrap_or(0.0),
            series.consolidation_ml.unwrap_or(0.0),
            series.involvement_percent.unwrap_or(0.0)
        );
    }
    println!("reports, masks and overlays: {}", dir.join("results").display());
    if a.keep {
        println!("kept {}", daemon.keep().display());
    }
    Ok(())
}

pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p.extension().is_some_and(|x| x == "dcm") {
                out.push(p);
            }
        }
    }
    out
}
