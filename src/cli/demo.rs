//! `ctmask demo` (what `make demo` runs): a watch folder, the daemon screening it with the demo
//! weights, three synthetic DICOM series dropped in (a control, a common-pneumonia and a COVID-19
//! patient), a one-line progress, then a table of the three verdicts read from the daemon's
//! socket. The folder with the reports, masks and overlays is kept and named at the end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::{Config, ModelPaths};
use crate::daemon::Shutdown;
use crate::data::synth::{ClassChoice, Layout, SynthOptions, run_synth};
use crate::protocol::{Label, Message, Request, SeriesSummary, SliceSummary, Verdict};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Folder of the demo weights (demo_segmentation.safetensors, demo_classifier.safetensors).
    #[arg(long, default_value = "pretrained_models")]
    pub models: PathBuf,
    /// Slices in each of the three synthetic series (control, common pneumonia, COVID-19).
    #[arg(long, default_value_t = 5)]
    pub slices: usize,
    /// Seed of the synthetic series (the three use this seed and the next two).
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Width and height of the synthetic slices (512, like real CT and the models' input size).
    #[arg(long, default_value_t = 512)]
    pub size: u32,
    /// Delete the demo folder at the end (it is kept, and named, by default).
    #[arg(long)]
    pub discard: bool,
    /// Seconds to wait for the series reports before giving up.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

/// The three series of the demo: what each synthetic patient has, and the verdict it should get.
const SERIES: [(ClassChoice, Verdict); 3] = [
    (ClassChoice::Control, Verdict::Control),
    (ClassChoice::Cp, Verdict::Pneumonia),
    (ClassChoice::Covid, Verdict::Covid),
];

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
    shutdown: Shutdown,
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
        let shutdown = Shutdown::new();
        let daemon_shutdown = shutdown.clone();
        let screener = super::daemon::make_screener(&cfg);
        let (settings, slice) = (cfg.daemon.clone(), cfg.slice.clone());
        let handle =
            std::thread::spawn(move || crate::daemon::run(settings, slice, screener, daemon_shutdown));
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
    println!("(the daemon logs warnings and errors only here; `--log info` shows everything)");
    // three synthetic patients, one DICOM series each, dropped in slice by slice (written under
    // a temporary name, renamed)
    let staging = dir.join("staging");
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    // each patient's SeriesInstanceUID: reports name no input file (privacy), so the table
    // finds a patient's series by the UID the demo itself wrote
    let mut series_uids: Vec<(String, Verdict)> = Vec::new();
    for (k, (class, name)) in SERIES.iter().enumerate() {
        let out = staging.join(name.as_str());
        run_synth(&SynthOptions {
            out: out.clone(),
            layout: Layout::Dicom,
            count: a.slices,
            seed: a.seed + k as u64,
            class: *class,
            size: a.size,
            preview: false,
            zoom: 0.0,
        })?;
        let mut series = walk(&out);
        series.sort();
        if let Some(uid) = series
            .first()
            .and_then(|f| crate::slice::read_slices(f, &Default::default()).ok())
            .and_then(|s| s.into_iter().next()?.meta.series_uid)
        {
            series_uids.push((uid, *name));
        }
        files.extend(
            series
                .into_iter()
                .enumerate()
                .map(|(i, p)| (p, format!("{name}_{i:03}.dcm"))),
        );
    }
    let socket = daemon.socket().to_path_buf();
    let started = Instant::now();
    daemon.wait_ready(Duration::from_secs(60))?;
    if let Some(banner) = crate::protocol::fetch_snapshot(&socket)
        .ok()
        .and_then(|s| crate::protocol::demo_banner(&s.models))
    {
        println!("{}", banner.to_uppercase());
    }
    for (i, (f, name)) in files.iter().enumerate() {
        let tmp = watch.join(format!(".slice{i}.part"));
        std::fs::copy(f, &tmp)?;
        std::fs::rename(&tmp, watch.join(name))?;
    }
    let (series, slices) = wait_for_reports(&socket, files.len(), started, a.timeout)?;
    print_table(&series, &slices, &series_uids);
    println!("\nreports, masks and overlays: {}", dir.join("results").display());
    if a.discard {
        daemon.stop();
    } else {
        println!("demo folder kept: {}", daemon.keep().display());
    }
    Ok(())
}

/// Polls the daemon until every dropped slice is in a series report, printing one progress
/// line (rewritten in place).
fn wait_for_reports(
    socket: &Path,
    total: usize,
    started: Instant,
    timeout: u64,
) -> anyhow::Result<(Vec<SeriesSummary>, Vec<SliceSummary>)> {
    use std::io::Write;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let mut client = crate::protocol::Client::connect(socket, Some(Duration::from_secs(10)))
            .context("connecting to the demo daemon")?;
        if let Message::Results(r) = client.request(&Request::Recent {
            limit: 200,
            offset: 0,
        })? {
            let reported: usize = r.series.iter().map(|s| s.slice_count as usize).sum();
            print!(
                "\rscreening: {}/{total} slices screened, {} of {} series reported, {:.0} s   ",
                r.slices.len().min(total),
                r.series.len(),
                SERIES.len(),
                started.elapsed().as_secs_f64()
            );
            std::io::stdout().flush()?;
            if reported == total && r.series.len() == SERIES.len() {
                println!();
                return Ok((r.series, r.slices));
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(timeout),
            "not every series was reported after {timeout} s"
        );
    }
}

/// One row per series: the patient dropped in, the verdict, the slices' labels and the burden.
fn print_table(series: &[SeriesSummary], slices: &[SliceSummary], uids: &[(String, Verdict)]) {
    println!(
        "\n{:<10} {:>6} {:<10} {:<5} {:>18} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "patient",
        "slices",
        "verdict",
        "",
        "labels c/p/v",
        "GGO mL",
        "cons mL",
        "lung %",
        "outside",
        "low score"
    );
    let mut right = 0;
    for (_, expected) in SERIES {
        let Some(s) = series
            .iter()
            .find(|s| uids.iter().any(|(uid, name)| *name == expected && s.key == *uid))
        else {
            println!("{expected:<10} (no report)");
            continue;
        };
        let of_series = || slices.iter().filter(|x| x.series_key == s.key);
        let outside: u32 = of_series().map(|x| x.lesions_outside_lung).sum();
        let low: u32 = of_series().map(|x| x.lesions_low_score).sum();
        // the slices' labels in the classifier's order: control/pneumonia/covid
        let labels: Vec<String> = Label::ALL
            .iter()
            .map(|l| s.counts.get(l.as_str()).copied().unwrap_or(0).to_string())
            .collect();
        let ok = s.verdict == expected;
        right += usize::from(ok);
        println!(
            "{:<10} {:>6} {:<10} {:<5} {:>18} {:>8.1} {:>8.1} {:>8.1} {:>9} {:>9}",
            expected,
            s.slice_count,
            s.verdict,
            if ok { "right" } else { "WRONG" },
            labels.join("/"),
            s.ggo_ml.unwrap_or(0.0),
            s.consolidation_ml.unwrap_or(0.0),
            s.involvement_percent.unwrap_or(0.0),
            outside,
            low
        );
    }
    println!(
        "{right} of {} verdicts right (rule: {}); lesions outside the lung field (outside) or \
         scoring under screening.min_counted_score (low score) are listed in the slice reports \
         and not counted",
        SERIES.len(),
        series.first().map_or("", |s| s.rule.as_str())
    );
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
