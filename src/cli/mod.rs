//! The command line: clap definitions and one function per subcommand. `main.rs` only parses,
//! calls [`run`] and maps errors to exit codes.

pub mod doctor;
pub mod segment;

use clap::{Parser, Subcommand};

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
    /// Find GGO and consolidation lesions in slices with a segmentation model.
    Segment(segment::SegmentArgs),
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Doctor(a) => doctor::run(&a),
        Command::Segment(a) => segment::run(&a),
    }
}
