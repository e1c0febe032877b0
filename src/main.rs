//! The `ctmask` binary: parse the command line, run one library function, map errors to exit codes.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // libtorch's CUDA library first (a dlopen; on a CPU-only machine it fails at once and starts
    // no thread): the malloc tuning is for the CPU path, and on a GPU machine glibc's per-thread
    // arenas serve the threads that finish each batch (bf16 batch 16 on an H200: 113 slices/s
    // with glibc's defaults against 55 with the tuning, whose single arena they contend for)
    if !ctmask::device::cuda_library_loaded() {
        ctmask::device::tune_allocator();
    }
    let cli = ctmask::cli::Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| ctmask::cli::log_filter(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    match ctmask::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ctmask::cli::SomeInputsRefused>().is_some() {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
