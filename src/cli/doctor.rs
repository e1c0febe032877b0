//! `ctmask doctor`: what this installation can do.

use serde::Serialize;

use crate::device;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print JSON for scripts instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct CudaDevice {
    pub index: i64,
    pub name: String,
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct DoctorReport {
    pub ctmask_version: String,
    pub libtorch_version: String,
    pub libtorch_path: Option<String>,
    pub libtorch_build_path: Option<String>,
    pub cuda_available: bool,
    pub cuda_library: Option<String>,
    pub cuda_unavailable_reason: Option<String>,
    pub cuda_devices: Vec<CudaDevice>,
    /// "available", or why CUDA graphs cannot be used ("not applicable: no CUDA" without CUDA).
    pub cuda_graphs: String,
    pub cpu_threads: usize,
    pub cores_available: usize,
    /// Whether the malloc settings of `device::tune_allocator` are in force.
    pub allocator_tuned: bool,
}

/// torch's version string, read from the loaded libtorch through a tiny TorchScript-free query:
/// the version of the PyTorch build is exposed in `torch/version.py` next to the library.
fn libtorch_version(lib_dir: Option<&str>) -> String {
    lib_dir
        .and_then(|d| std::fs::read_to_string(std::path::Path::new(d).join("../version.py")).ok())
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("__version__"))
                .and_then(|l| l.split('\'').nth(1).map(str::to_string))
        })
        .map(|v| v.split('+').next().unwrap_or(&v).to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn cuda_devices() -> Vec<CudaDevice> {
    if !tch::Cuda::is_available() {
        return Vec::new();
    }
    (0..tch::Cuda::device_count())
        .map(|i| CudaDevice {
            index: i,
            name: crate::device::cuda_device_name(i).unwrap_or_else(|| format!("cuda:{i}")),
            memory_bytes: crate::device::cuda_total_memory(i),
        })
        .collect()
}

/// Gather the report.
pub fn report() -> DoctorReport {
    let load = device::init();
    let threads = device::set_threads(None);
    let loaded = device::libtorch_loaded_dir();
    let cuda_available = tch::Cuda::is_available();
    DoctorReport {
        ctmask_version: env!("CARGO_PKG_VERSION").into(),
        libtorch_version: libtorch_version(loaded.as_deref().or(device::libtorch_build_dir())),
        libtorch_path: loaded,
        libtorch_build_path: device::libtorch_build_dir().map(str::to_string),
        cuda_available,
        cuda_library: load.loaded.clone(),
        cuda_unavailable_reason: (!cuda_available)
            .then(|| load.error.clone().unwrap_or_else(|| "no CUDA device".into())),
        cuda_devices: cuda_devices(),
        cuda_graphs: if cuda_available {
            crate::cuda_graph::availability().map_or_else(|e| e, |()| "available".into())
        } else {
            "not applicable: no CUDA".into()
        },
        cpu_threads: tch::get_num_threads().max(0) as usize,
        cores_available: threads,
        allocator_tuned: device::allocator_tuned(),
    }
}

pub fn run(a: &DoctorArgs) -> anyhow::Result<()> {
    let r = report();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("ctmask          {}", r.ctmask_version);
    println!("libtorch        {}", r.libtorch_version);
    println!(
        "libtorch path   {}",
        r.libtorch_path.as_deref().unwrap_or("unknown")
    );
    println!("cuda            {}", r.cuda_available);
    if let Some(why) = &r.cuda_unavailable_reason {
        println!("  why not       {why}");
    }
    for d in &r.cuda_devices {
        let mem = d
            .memory_bytes
            .map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_default();
        println!("  cuda:{}        {} {}", d.index, d.name, mem);
    }
    println!("cuda graphs     {}", r.cuda_graphs);
    println!(
        "cpu threads     {} (cores available: {})",
        r.cpu_threads, r.cores_available
    );
    println!(
        "allocator       {}",
        if r.allocator_tuned {
            "tuned (CTMASK_SYSTEM_MALLOC=1 for glibc defaults)"
        } else {
            "glibc defaults"
        }
    );
    println!("{}", crate::DISCLAIMER);
    Ok(())
}
