//! `ctmask bench-daemon`: the daemon's own latency and overhead, measured from outside as a
//! scanner would see it. An in-process daemon (the real one: watcher, SQLite queue, worker,
//! outputs, socket) screens a temporary watch folder with the given models; the benchmark drops
//! synthetic DICOM slices in and listens to the daemon's event stream on its socket.
//!
//! - **Intake latency**: one slice at a time, alternately written in place (create, write, close)
//!   and written under a temporary name then renamed in; the time from the close (or the rename)
//!   to the `queued` event arriving on the socket. Target: under 200 ms with inotify.
//! - **Overhead per slice**, one slice at a time: from `queued` to `done` minus the model time the
//!   daemon reports for that slice (`time_ms`): worker pick-up, reading and decoding the file,
//!   the outputs (JSON, mask and overlay PNGs, each fsynced and renamed), the queue's commits.
//!   Target: under 20 ms.
//! - **Burst**: all of a second set of slices dropped at once; wall time from the first drop to
//!   the last `done`, slices per second, and the wall time not spent in the model, per slice.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::data::synth::{ClassChoice, Layout, SynthOptions, run_synth};
use crate::protocol::{Event, EventKind, Message, Request};

#[derive(Debug, clap::Args)]
pub struct BenchDaemonArgs {
    /// Folder of the models (demo_segmentation.safetensors and demo_classifier.safetensors).
    #[arg(long, default_value = "pretrained_models")]
    pub models: PathBuf,
    /// Slices dropped one at a time (the latency and overhead figures).
    #[arg(long, default_value_t = 20)]
    pub slices: usize,
    /// Slices dropped at once afterwards (the burst figures); 0 skips the burst.
    #[arg(long, default_value_t = 20)]
    pub burst: usize,
    /// Width and height of the synthetic slices.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Device of the daemon: auto, cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Watch by polling instead of inotify (what network filesystems get).
    #[arg(long)]
    pub poll: bool,
    /// Seconds to wait for any one event before failing.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Keep the benchmark folder (printed) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

/// Percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    pub mean: f64,
}

impl Spread {
    fn of(xs: &[f64]) -> Option<Spread> {
        if xs.is_empty() {
            return None;
        }
        Some(Spread {
            n: xs.len(),
            p50: super::bench::percentile(xs, 0.5),
            p95: super::bench::percentile(xs, 0.95),
            max: xs.iter().copied().fold(f64::MIN, f64::max),
            mean: xs.iter().sum::<f64>() / xs.len() as f64,
        })
    }
}

#[derive(Debug, Serialize)]
pub struct BenchDaemonReport {
    pub watch: &'static str,
    pub device: String,
    pub size: u32,
    /// Close (written in place) to `queued` on the socket, ms.
    pub intake_closed_ms: Option<Spread>,
    /// Rename into the folder to `queued` on the socket, ms.
    pub intake_renamed_ms: Option<Spread>,
    /// `queued` to `done` minus the model time, one slice at a time, ms.
    pub overhead_ms: Option<Spread>,
    /// The model time the daemon reported for those slices, ms.
    pub model_ms: Option<Spread>,
    pub burst_slices: usize,
    pub burst_wall_s: Option<f64>,
    pub burst_slices_per_s: Option<f64>,
    /// (burst wall time - the slices' model time) / slices, ms.
    pub burst_overhead_ms_per_slice: Option<f64>,
    pub targets: Targets,
}

#[derive(Debug, Serialize)]
pub struct Targets {
    pub intake_ms: f64,
    pub overhead_ms: f64,
    /// Every intake under its target (p95 and max) and the overhead's p95 under its target.
    pub met: bool,
}

/// Events as they arrive on a subscribed connection, stamped on arrival.
struct EventStream {
    rx: Receiver<(Instant, Event)>,
    timeout: Duration,
}

impl EventStream {
    fn subscribe(socket: &Path, timeout: Duration) -> anyhow::Result<EventStream> {
        let mut client = crate::protocol::Client::connect(socket, None)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        client.send(&Request::Subscribe)?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(m) = client.next_message() {
                if let Message::Event(e) = m
                    && tx.send((Instant::now(), e)).is_err()
                {
                    break;
                }
            }
        });
        Ok(EventStream { rx, timeout })
    }

    /// The next event of `kind` (for `job` when given), skipping others; fails on a
    /// `failed`/`quarantined` event for the job and on the timeout.
    fn wait(&self, kind: EventKind, job: Option<i64>) -> anyhow::Result<(Instant, Event)> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((t, e)) => {
                    let ours = job.is_none() || e.job_id == job;
                    if ours && job.is_some() && matches!(e.kind, EventKind::Failed | EventKind::Quarantined) {
                        anyhow::bail!("job {:?} failed: {}", e.job_id, e.message);
                    }
                    if e.kind == kind && ours {
                        return Ok((t, e));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    anyhow::bail!("no {kind:?} event within {} s", self.timeout.as_secs())
                }
                Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the daemon closed the socket"),
            }
        }
    }
}

fn synth_series(dir: &Path, count: usize, seed: u64, size: u32) -> anyhow::Result<Vec<PathBuf>> {
    run_synth(&SynthOptions {
        out: dir.to_path_buf(),
        layout: Layout::Dicom,
        count,
        seed,
        class: ClassChoice::Covid,
        size,
        preview: false,
        zoom: 0.0,
    })?;
    let mut files = super::demo::walk(dir);
    files.sort();
    anyhow::ensure!(
        files.len() == count,
        "synth wrote {} of {count} slices",
        files.len()
    );
    Ok(files)
}

/// The model time per slice the daemon reported, by job id.
fn model_times(socket: &Path) -> anyhow::Result<std::collections::HashMap<i64, f64>> {
    let mut client = crate::protocol::Client::connect(socket, Some(Duration::from_secs(10)))?;
    let mut times = std::collections::HashMap::new();
    loop {
        let page = Request::Recent {
            limit: crate::protocol::RECENT_MAX,
            offset: times.len(),
        };
        match client.request(&page)? {
            Message::Results(r) => {
                let before = times.len();
                times.extend(r.slices.iter().map(|s| (s.job_id, s.time_ms)));
                if times.len() == before {
                    return Ok(times); // past the last page
                }
            }
            other => anyhow::bail!("unexpected reply to recent: {other:?}"),
        }
    }
}

pub fn run(a: &BenchDaemonArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.slices > 0, "--slices must be at least 1");
    let models = super::demo::find_models(&a.models)?;
    let mut daemon = super::demo::TempDaemon::start(
        "ctmask-bench-daemon-",
        &models,
        &format!(
            "  device: {}\n  poll: {}\n  poll_interval_s: 0.1\n  quiet_period_s: 2.0\n  batch_size: 4\n",
            a.device,
            if a.poll { "poll" } else { "auto" },
        ),
    )?;
    let (dir, watch) = (daemon.dir.clone(), daemon.watch.clone());
    let one = synth_series(&dir.join("staging-one"), a.slices, 3001, a.size)?;
    let burst = if a.burst > 0 {
        synth_series(&dir.join("staging-burst"), a.burst, 3002, a.size)?
    } else {
        Vec::new()
    };
    let result = (|| -> anyhow::Result<BenchDaemonReport> {
        daemon.wait_ready(Duration::from_secs(a.timeout))?;
        let socket = daemon.socket().to_path_buf();
        let events = EventStream::subscribe(&socket, Duration::from_secs(a.timeout))?;
        // the models are loaded by the first slice: the first drop is a warm-up, not timed
        let mut closed = Vec::new();
        let mut renamed = Vec::new();
        let mut e2e: Vec<(i64, f64)> = Vec::new();
        for (i, f) in one.iter().enumerate() {
            let bytes = std::fs::read(f)?;
            let name = watch.join(format!("one{i:04}.dcm"));
            let via_rename = i % 2 == 1;
            let t_in = if via_rename {
                let tmp = watch.join(format!(".one{i:04}.part"));
                std::fs::write(&tmp, &bytes)?;
                std::fs::rename(&tmp, &name)?;
                Instant::now()
            } else {
                let mut out = std::fs::File::create(&name)?;
                std::io::Write::write_all(&mut out, &bytes)?;
                drop(out); // the close
                Instant::now()
            };
            let (t_q, q) = events.wait(EventKind::Queued, None)?;
            let (t_d, _) = events.wait(EventKind::Done, q.job_id)?;
            if i == 0 {
                continue;
            }
            let ms = (t_q - t_in).as_secs_f64() * 1e3;
            if via_rename {
                renamed.push(ms)
            } else {
                closed.push(ms)
            }
            e2e.push((q.job_id.unwrap_or(-1), (t_d - t_q).as_secs_f64() * 1e3));
        }
        let times = model_times(&socket)?;
        let mut overhead = Vec::new();
        let mut model = Vec::new();
        for (job, ms) in &e2e {
            let m = *times
                .get(job)
                .with_context(|| format!("job {job} is missing from the daemon's recent results"))?;
            model.push(m);
            overhead.push(ms - m);
        }
        let (mut burst_wall, mut burst_rate, mut burst_overhead) = (None, None, None);
        if !burst.is_empty() {
            let t0 = Instant::now();
            for (i, f) in burst.iter().enumerate() {
                let tmp = watch.join(format!(".burst{i:04}.part"));
                std::fs::copy(f, &tmp)?;
                std::fs::rename(&tmp, watch.join(format!("burst{i:04}.dcm")))?;
            }
            let mut jobs = Vec::new();
            for _ in 0..burst.len() {
                jobs.push(events.wait(EventKind::Queued, None)?.1.job_id);
            }
            for j in &jobs {
                events.wait(EventKind::Done, *j)?;
            }
            let wall = t0.elapsed().as_secs_f64();
            let times = model_times(&socket)?;
            let model_sum: f64 = jobs.iter().filter_map(|j| j.and_then(|j| times.get(&j))).sum();
            burst_wall = Some(wall);
            burst_rate = Some(burst.len() as f64 / wall);
            burst_overhead = Some((wall * 1e3 - model_sum) / burst.len() as f64);
        }
        let intake_closed_ms = Spread::of(&closed);
        let intake_renamed_ms = Spread::of(&renamed);
        let overhead_ms = Spread::of(&overhead);
        let (intake_target, overhead_target) = (200.0, 20.0);
        let met = [&intake_closed_ms, &intake_renamed_ms]
            .iter()
            .all(|s| s.as_ref().is_none_or(|s| s.max < intake_target))
            && overhead_ms.as_ref().is_none_or(|s| s.p95 < overhead_target);
        Ok(BenchDaemonReport {
            watch: if a.poll { "poll" } else { "inotify" },
            device: a.device.clone(),
            size: a.size,
            intake_closed_ms,
            intake_renamed_ms,
            overhead_ms,
            model_ms: Spread::of(&model),
            burst_slices: burst.len(),
            burst_wall_s: burst_wall,
            burst_slices_per_s: burst_rate,
            burst_overhead_ms_per_slice: burst_overhead,
            targets: Targets {
                intake_ms: intake_target,
                overhead_ms: overhead_target,
                met,
            },
        })
    })();
    daemon.stop();
    let r = result?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_report(&r);
    }
    if a.keep {
        println!("kept {}", daemon.keep().display());
    }
    Ok(())
}

fn print_report(r: &BenchDaemonReport) {
    println!(
        "daemon benchmark: {} watching, device {}, {}x{} DICOM slices",
        r.watch, r.device, r.size, r.size
    );
    let row = |name: &str, s: &Option<Spread>, target: Option<f64>| {
        if let Some(s) = s {
            println!(
                "  {name:<34} n {:>3}  p50 {:>8.1}  p95 {:>8.1}  max {:>8.1}  mean {:>8.1} ms{}",
                s.n,
                s.p50,
                s.p95,
                s.max,
                s.mean,
                target
                    .map(|t| format!("  (target < {t:.0} ms)"))
                    .unwrap_or_default()
            );
        }
    };
    row(
        "intake: close -> queued",
        &r.intake_closed_ms,
        Some(r.targets.intake_ms),
    );
    row(
        "intake: rename -> queued",
        &r.intake_renamed_ms,
        Some(r.targets.intake_ms),
    );
    row("model time per slice", &r.model_ms, None);
    row(
        "overhead: queued -> done - model",
        &r.overhead_ms,
        Some(r.targets.overhead_ms),
    );
    if let (Some(w), Some(rate), Some(o)) = (
        r.burst_wall_s,
        r.burst_slices_per_s,
        r.burst_overhead_ms_per_slice,
    ) {
        println!(
            "  burst of {} slices: {w:.2} s, {rate:.2} slices/s, wall time outside the model {o:.1} ms/slice",
            r.burst_slices
        );
    }
    println!("targets {}", if r.targets.met { "met" } else { "NOT met" });
}
