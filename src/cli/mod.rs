//! The command line: clap definitions and one function per subcommand. `main.rs` only parses,
//! calls [`run`] and maps errors to exit codes.

pub mod bench;
pub mod bench_daemon;
pub mod classify;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod import;
pub mod segment;
pub mod synth;
pub mod train_seg;

use clap::{Parser, Subcommand};

/// Some inputs of a batch command (`segment`, `classify`) were refused or failed; the others
/// were processed and their results written. The binary exits with status 2 for it.
#[derive(Debug, thiserror::Error)]
#[error("{refused} of {total} input(s) refused or failed (see above); the others were processed")]
pub struct SomeInputsRefused {
    pub refused: usize,
    pub total: usize,
}

/// `Ok` when no input was refused, else [`SomeInputsRefused`].
pub fn inputs_outcome(refused: usize, total: usize) -> anyhow::Result<()> {
    if refused == 0 {
        Ok(())
    } else {
        Err(SomeInputsRefused { refused, total }.into())
    }
}

/// The tracing filter for `--log`: a bare level (`info`, `debug`...) applies to ctmask's own
/// messages, while other crates stay at `warn` (the JPEG 2000 codec logs every codestream
/// header at info) unless the level asked for is stricter; any other filter text (with `=` or
/// `,`) is taken as it is, so `--log openjp2=info` still shows them.
pub fn log_filter(level: &str) -> String {
    let level = level.trim();
    match level.to_ascii_lowercase().as_str() {
        "error" | "off" => level.to_string(),
        "warn" | "info" | "debug" | "trace" => format!("warn,ctmask={level}"),
        _ => level.to_string(),
    }
}

/// ctmask: COVID-19 screening of chest CT (COVID-CT-Mask-Net in Rust).
/// Research use only: not a medical device.
#[derive(Debug, Parser)]
#[command(name = "ctmask", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing filter); RUST_LOG also works.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report the ctmask and libtorch versions, the libtorch in use, CUDA devices and CPU threads.
    Doctor(doctor::DoctorArgs),
    /// Make synthetic chest CT: CNCB or COVIDx layouts, or DICOM series.
    Synth(synth::SynthArgs),
    /// Convert an original COVID-CT-Mask-Net (or torchvision) .pth into a ctmask model file.
    ImportWeights(import::ImportArgs),
    /// Find GGO and consolidation lesions in slices with a segmentation model.
    Segment(segment::SegmentArgs),
    /// Train a segmentation model on a CNCB-layout folder (the original's defaults).
    TrainSegmentation(train_seg::TrainSegArgs),
    /// Mask AP of a segmentation model: the original's per-image metric and COCO-style.
    EvaluateSegmentation(train_seg::EvalSegArgs),
    /// Label slices control / common pneumonia / COVID-19 with COVID-CT-Mask-Net.
    Classify(classify::ClassifyArgs),
    /// Train module S (and batch-norm affine parameters) on a segmentation model (§4.5-4.6).
    TrainClassifier(classify::TrainClsArgs),
    /// Confusion matrix, sensitivity, precision, F1, accuracy of a classifier.
    EvaluateClassifier(classify::EvalClsArgs),
    /// Watch folders and screen every new slice (the systemd service runs this).
    Daemon(daemon::DaemonArgs),
    /// Print the running daemon's status (queue, intake, device).
    Status(daemon::StatusArgs),
    /// Pause or resume intake, retry a job or every failed one (needs the control role).
    Control(daemon::ControlArgs),
    /// The dashboard: queue, results, GPU load and log of the running daemon (over SSH too).
    Tui(TuiArgs),
    /// Throughput, latency, time per stage and peak memory of screening (or a training step).
    Bench(bench::BenchArgs),
    /// The daemon's intake latency (close or rename -> queued) and its overhead per slice.
    BenchDaemon(bench_daemon::BenchDaemonArgs),
    /// The whole product on a synthetic series: daemon, demo weights, reports, summary.
    Demo(demo::DemoArgs),
}

#[derive(Debug, clap::Args)]
pub struct TuiArgs {
    /// Config file naming the socket (default: config/ctmask.yaml, then /etc/ctmask/ctmask.yaml).
    #[arg(long, conflicts_with = "socket")]
    pub config: Option<std::path::PathBuf>,
    /// The daemon's socket.
    #[arg(long)]
    pub socket: Option<std::path::PathBuf>,
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Doctor(a) => doctor::run(&a),
        Command::Segment(a) => segment::run(&a),
        Command::Synth(a) => synth::run(&a),
        Command::ImportWeights(a) => import::run(&a),
        Command::TrainSegmentation(a) => train_seg::run_train(&a),
        Command::EvaluateSegmentation(a) => train_seg::run_eval(&a),
        Command::Classify(a) => classify::run_classify(&a),
        Command::TrainClassifier(a) => classify::run_train(&a),
        Command::EvaluateClassifier(a) => classify::run_eval(&a),
        Command::Daemon(a) => daemon::run_daemon(&a),
        Command::Status(a) => daemon::run_status(&a),
        Command::Control(a) => daemon::run_control(&a),
        Command::Demo(a) => demo::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::BenchDaemon(a) => bench_daemon::run(&a),
        Command::Tui(a) => {
            let socket = daemon::socket_path(a.socket.as_deref(), a.config.as_deref())?;
            crate::tui::run(&socket)?;
            Ok(())
        }
    }
}
