//! Where the model runs: making CUDA visible to a binary built against a CPU-only libtorch, picking
//! the device, and setting torch's CPU threads from the cores this process may use.
//!
//! rustc links with `--as-needed`, so nothing ever loads `libtorch_cuda.so` and
//! `tch::Cuda::is_available()` would be false even on a GPU machine. [`init`] loads it at run
//! time (dlopen, `RTLD_GLOBAL`) when it can be found next to the libtorch in use; its static
//! initialisers register the CUDA hooks. Where it is missing or its dependencies are (the minimal
//! CPU venv), the load fails cleanly and everything runs on the CPU.

use std::ffi::CString;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// What happened when ctmask tried to load libtorch's CUDA library.
#[derive(Debug, Clone, Serialize)]
pub struct CudaLoad {
    /// The library that was loaded, if any.
    pub loaded: Option<String>,
    /// Why it was not loaded (the dlopen error), if it was not.
    pub error: Option<String>,
}

/// Whether [`tune_allocator`] changed glibc malloc's settings in this process.
static ALLOCATOR_TUNED: OnceLock<bool> = OnceLock::new();

/// Keep freed memory in the process instead of handing every large tensor back to the kernel.
///
/// glibc serves allocations above its mmap threshold (32 MiB at most, adjusted on the fly) with a
/// fresh `mmap` and unmaps them on free, so every big temporary of a forward pass (a pasted
/// `[100, 512, 512]` mask stack is 100 MB) is paid again in page faults and page zeroing: a
/// quarter of the CPU time of a 512x512 R50 forward on the 2-core machine. With one arena, a
/// 1 GiB mmap threshold and a 2 GiB trim threshold the memory is reused: `ctmask bench` at
/// 512x512 went from about 1.42 s to 1.18 s per slice (peak RSS about 1.05 to 1.14 GB; the
/// memory stays with the process, at its peak, for the next slice). Setting
/// `CTMASK_SYSTEM_MALLOC=1` keeps glibc's defaults; glibc's own `MALLOC_*_` variables, when set,
/// win as well. Call first thing in `main`, before threads start. `main` calls it only where
/// libtorch's CUDA library does not load: on a GPU the host's work runs on several threads (the lung fields and
/// findings of a batch), which the single arena serialises (an H200, R50 bf16 batch 16: 55
/// slices/s tuned, 113 with glibc's defaults).
pub fn tune_allocator() -> bool {
    *ALLOCATOR_TUNED.get_or_init(|| {
        let env_set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        if env_set("CTMASK_SYSTEM_MALLOC")
            || [
                "MALLOC_MMAP_THRESHOLD_",
                "MALLOC_TRIM_THRESHOLD_",
                "MALLOC_ARENA_MAX",
                "GLIBC_TUNABLES",
            ]
            .iter()
            .any(|k| env_set(k))
        {
            return false;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; called before other threads run.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
                && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        false
    })
}

/// Whether the allocator settings of [`tune_allocator`] are in force.
pub fn allocator_tuned() -> bool {
    ALLOCATOR_TUNED.get().copied().unwrap_or(false)
}

static CUDA_LOAD: OnceLock<CudaLoad> = OnceLock::new();

/// Whether libtorch's CUDA library is loaded in this process ([`init`]): a GPU machine's libtorch
/// (on the CPU-only install it fails to load). Asks the driver nothing, so a command such as
/// `ctmask status` does not initialise CUDA.
pub fn cuda_library_loaded() -> bool {
    init().loaded.is_some()
}

/// Load `libtorch_cuda.so` once per process (a no-op after the first call) and return the outcome.
pub fn init() -> &'static CudaLoad {
    CUDA_LOAD.get_or_init(load_torch_cuda)
}

fn load_torch_cuda() -> CudaLoad {
    let mut error = None;
    for candidate in cuda_library_candidates() {
        let Ok(c_path) = CString::new(candidate.clone()) else {
            continue;
        };
        // SAFETY: dlopen is given a valid NUL-terminated path; the handle is deliberately kept
        // for the life of the process (the library registers global hooks).
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            return CudaLoad {
                loaded: Some(candidate),
                error: None,
            };
        }
        // SAFETY: dlerror returns a thread-local C string or NULL.
        let msg = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown dlopen error".to_string()
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        error.get_or_insert(msg);
    }
    CudaLoad {
        loaded: None,
        error: Some(error.unwrap_or_else(|| "libtorch_cuda.so not found".into())),
    }
}

/// `libtorch_cuda.so` by name first (the dynamic loader searches LD_LIBRARY_PATH, then the
/// binary's RUNPATH), then in the libtorch directory the binary was built against.
fn cuda_library_candidates() -> Vec<String> {
    let mut v = vec!["libtorch_cuda.so".to_string()];
    if let Some(dir) = libtorch_build_dir() {
        v.push(format!("{dir}/libtorch_cuda.so"));
    }
    v
}

/// The libtorch library directory this binary was linked against (its RUNPATH).
pub fn libtorch_build_dir() -> Option<&'static str> {
    option_env!("CTMASK_LIBTORCH_LIB")
}

/// The directory of the libtorch actually loaded in this process, read from /proc/self/maps.
pub fn libtorch_loaded_dir() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| p.rsplit_once('/').map(|(d, _)| d.to_string()))
}

/// The device a user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when a usable GPU is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    /// Resolve to a tch device; asking for CUDA where there is none is an error. On CUDA, fp32
    /// is kept exact (TF32 off); reduced precision is asked for explicitly (bf16/fp16).
    pub fn resolve(self) -> crate::Result<tch::Device> {
        init();
        if tch::Cuda::is_available() {
            disable_tf32();
        }
        match self {
            DeviceChoice::Cpu => Ok(tch::Device::Cpu),
            DeviceChoice::Auto => Ok(if tch::Cuda::is_available() {
                tch::Device::Cuda(0)
            } else {
                tch::Device::Cpu
            }),
            DeviceChoice::Cuda => {
                if tch::Cuda::is_available() {
                    Ok(tch::Device::Cuda(0))
                } else {
                    Err(crate::Error::Other(format!(
                        "cuda asked for but not usable: {}",
                        init().error.as_deref().unwrap_or("no CUDA device")
                    )))
                }
            }
        }
    }
}

/// The device a config names (`daemon.device`): `auto`, `cpu`, `cuda` or `cuda:N`. Parsed once,
/// where the config is read, so a bad value is refused with its file, line and key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSetting {
    /// CUDA when a usable GPU is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The first GPU.
    Cuda,
    /// GPU number N.
    CudaIndex(usize),
}

impl TryFrom<String> for DeviceSetting {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "auto" => Ok(DeviceSetting::Auto),
            "cpu" => Ok(DeviceSetting::Cpu),
            "cuda" => Ok(DeviceSetting::Cuda),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<u32>().ok())
                .map(|n| DeviceSetting::CudaIndex(n as usize))
                .ok_or_else(|| format!("`{s}` is not auto, cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSetting::Auto => f.write_str("auto"),
            DeviceSetting::Cpu => f.write_str("cpu"),
            DeviceSetting::Cuda => f.write_str("cuda"),
            DeviceSetting::CudaIndex(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl From<DeviceSetting> for String {
    fn from(d: DeviceSetting) -> String {
        d.to_string()
    }
}

impl DeviceSetting {
    /// Resolve to a tch device, as [`DeviceChoice::resolve`] does; `cuda:N` needs CUDA too.
    /// libtorch's CUDA libraries are loaded first in every case.
    pub fn resolve(self) -> crate::Result<tch::Device> {
        match self {
            DeviceSetting::Auto => DeviceChoice::Auto.resolve(),
            DeviceSetting::Cpu => {
                init();
                Ok(tch::Device::Cpu)
            }
            DeviceSetting::Cuda => DeviceChoice::Cuda.resolve(),
            DeviceSetting::CudaIndex(i) => {
                DeviceChoice::Cuda.resolve()?;
                Ok(tch::Device::Cuda(i))
            }
        }
    }
}

type GlobalContext = unsafe extern "C" fn() -> *mut std::ffi::c_void;
type SetFlag = unsafe extern "C" fn(*mut std::ffi::c_void, bool);

/// Turn TF32 off for cuDNN convolutions and cuBLAS matrix products, so fp32 on CUDA is IEEE fp32
/// and agrees with the CPU within the parity tolerances (libtorch allows TF32 convolutions by
/// default). Looked up at run time in libtorch (`at::globalContext()`,
/// `at::Context::setAllowTF32CuDNN/CuBLAS`); returns whether it could be set.
pub fn disable_tf32() -> bool {
    // SAFETY: the symbols are libtorch's exported C++ functions with these signatures
    // (`at::Context& at::globalContext()`, `void at::Context::setAllowTF32CuDNN(bool)`: the
    // object pointer is the first argument of a member function in the Itanium ABI).
    unsafe {
        let ctx = libc::dlsym(libc::RTLD_DEFAULT, c"_ZN2at13globalContextEv".as_ptr());
        let cudnn = libc::dlsym(
            libc::RTLD_DEFAULT,
            c"_ZN2at7Context17setAllowTF32CuDNNEb".as_ptr(),
        );
        let cublas = libc::dlsym(
            libc::RTLD_DEFAULT,
            c"_ZN2at7Context18setAllowTF32CuBLASEb".as_ptr(),
        );
        if ctx.is_null() || cudnn.is_null() || cublas.is_null() {
            return false;
        }
        let ctx: GlobalContext = std::mem::transmute(ctx);
        let cudnn: SetFlag = std::mem::transmute(cudnn);
        let cublas: SetFlag = std::mem::transmute(cublas);
        let c = ctx();
        cudnn(c, false);
        cublas(c, false);
        true
    }
}

/// A short name for a device, as reports print it.
pub fn device_name(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// CPU cores this process may use: the affinity mask, further limited by a cgroup v2 CPU quota.
pub fn available_cores() -> usize {
    let affinity = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let quota = std::fs::read_to_string("/sys/fs/cgroup/cpu.max")
        .ok()
        .and_then(|s| parse_cpu_max(&s));
    match quota {
        Some(q) => affinity.min(q.max(1)),
        None => affinity,
    }
}

/// Parse cgroup v2 `cpu.max` ("max 100000" or "150000 100000") into whole cores (rounded up).
pub fn parse_cpu_max(s: &str) -> Option<usize> {
    let mut it = s.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let q: f64 = quota.parse().ok()?;
    Some((q / period).ceil() as usize)
}

/// Set torch's intra-op threads to the cores available (or `requested` when given).
pub fn set_threads(requested: Option<usize>) -> usize {
    let n = requested.unwrap_or_else(available_cores).max(1);
    tch::set_num_threads(n as i32);
    n
}

type CudaGetDeviceProperties = unsafe extern "C" fn(*mut u8, i32) -> i32;

/// Name and memory of a CUDA device through the CUDA runtime's `cudaGetDeviceProperties`
/// (looked up at run time, so CPU-only builds need nothing).
fn cuda_properties(index: i64) -> Option<(String, u64)> {
    // SAFETY: dlsym on RTLD_DEFAULT looks a symbol up in the already-loaded libraries; the
    // function signature is the CUDA runtime's documented one. The struct is larger than 1 KiB
    // in every CUDA version; 4 KiB leaves room. name is char[256] at offset 0 and totalGlobalMem
    // a size_t at offset 288 (after name[256] and the 16-byte uuid and 8-byte luid + 4-byte
    // luidDeviceNodeMask, padded).
    unsafe {
        let sym = libc::dlsym(libc::RTLD_DEFAULT, c"cudaGetDeviceProperties_v2".as_ptr());
        let sym = if sym.is_null() {
            libc::dlsym(libc::RTLD_DEFAULT, c"cudaGetDeviceProperties".as_ptr())
        } else {
            sym
        };
        if sym.is_null() {
            return None;
        }
        let f: CudaGetDeviceProperties = std::mem::transmute(sym);
        let mut buf = vec![0u8; 4096];
        if f(buf.as_mut_ptr(), index as i32) != 0 {
            return None;
        }
        let name_end = buf[..256].iter().position(|&b| b == 0).unwrap_or(256);
        let name = String::from_utf8_lossy(&buf[..name_end]).into_owned();
        let mut mem = [0u8; 8];
        mem.copy_from_slice(&buf[288..296]);
        Some((name, u64::from_ne_bytes(mem)))
    }
}

type CudaMemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;

/// Device memory in use on the current CUDA device (total - free), bytes.
pub fn cuda_used_memory() -> Option<u64> {
    // SAFETY: dlsym looks up the CUDA runtime's cudaMemGetInfo(size_t*, size_t*) in the loaded
    // libraries; both out-pointers are valid for the call.
    unsafe {
        let sym = libc::dlsym(libc::RTLD_DEFAULT, c"cudaMemGetInfo".as_ptr());
        if sym.is_null() {
            return None;
        }
        let f: CudaMemGetInfo = std::mem::transmute(sym);
        let (mut free, mut total) = (0usize, 0usize);
        if f(&mut free, &mut total) != 0 {
            return None;
        }
        Some((total - free) as u64)
    }
}

/// A CUDA device's name.
pub fn cuda_device_name(index: i64) -> Option<String> {
    cuda_properties(index).map(|p| p.0)
}

/// A CUDA device's total memory in bytes.
pub fn cuda_total_memory(index: i64) -> Option<u64> {
    cuda_properties(index).map(|p| p.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_parsing() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("100000 100000"), Some(1));
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn cuda_load_fails_cleanly_without_cuda_libraries() {
        let r = init();
        // On a CPU-only venv the load must fail with a reason, never abort the process.
        if !tch::Cuda::is_available() {
            assert!(r.loaded.is_none() || tch::Cuda::device_count() == 0);
        }
        assert_eq!(DeviceChoice::Cpu.resolve().ok(), Some(tch::Device::Cpu));
    }
}
