//! CUDA graphs for the static-shape part of the model: capture a function of fixed-shape input
//! tensors once, then replay its kernels with one launch.
//!
//! tch has no binding for `at::cuda::CUDAGraph` (nor for CUDA streams), so this crate carries a
//! small C++ shim, `csrc/cuda_graph_shim.cpp`, that wraps it behind a C interface with no
//! exceptions escaping. build.rs compiles it against libtorch's headers and the binary embeds
//! it. It is loaded at most once per process, and only after [`crate::device::init`] has
//! loaded `libtorch_cuda.so` and CUDA is usable: written to an anonymous `memfd_create` file and
//! opened from `/proc/self/fd/N` (`RTLD_NOW | RTLD_LOCAL`), so nothing is written to the file
//! system (a private temporary file is the fallback where memfd cannot be executed). Its
//! `NEEDED` libraries (libtorch_cuda, libc10_cuda, libc10) are then the copies already in the
//! process. The same binary therefore runs on CPU-only machines, where [`availability`] says why
//! graphs are unavailable.
//!
//! As `torch.cuda.graph` does, warm-up runs and the capture run on a side stream that first
//! waits for the current stream; the original stream waits for the side stream afterwards. The
//! capture gets a private memory pool; replays run on the current stream.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::sync::OnceLock;

use tch::{Device, Tensor};

/// The shim built by build.rs (empty where it could not be built).
static SHIM_BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libctmask_cuda_graph.so"));

/// `built`, or why build.rs could not build the shim.
const SHIM_BUILD: &str = env!("CTMASK_CUDA_GRAPH_SHIM");

/// How strictly CUDA refuses unsafe API calls (synchronisations, ...) while a capture is open
/// (`cudaStreamCaptureMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureMode {
    /// Refused from every thread (PyTorch's default).
    Global,
    /// Refused from the capturing thread only: other threads (the daemon's) may use CUDA.
    #[default]
    ThreadLocal,
    /// Not refused.
    Relaxed,
}

impl CaptureMode {
    fn code(self) -> c_int {
        match self {
            CaptureMode::Global => 0,
            CaptureMode::ThreadLocal => 1,
            CaptureMode::Relaxed => 2,
        }
    }
}

type Handle = *mut c_void;

/// The shim's entry points.
struct Shim {
    last_error: unsafe extern "C" fn() -> *const c_char,
    torch_version: unsafe extern "C" fn() -> *const c_char,
    graph_new: unsafe extern "C" fn() -> Handle,
    graph_free: unsafe extern "C" fn(Handle),
    stream_begin: unsafe extern "C" fn(Handle, c_int) -> c_int,
    stream_end: unsafe extern "C" fn(Handle) -> c_int,
    capture_begin: unsafe extern "C" fn(Handle, c_int) -> c_int,
    capture_end: unsafe extern "C" fn(Handle) -> c_int,
    capture_abort: unsafe extern "C" fn(Handle) -> c_int,
    replay: unsafe extern "C" fn(Handle) -> c_int,
}

impl Shim {
    /// The shim's last error on this thread.
    fn last_error(&self) -> String {
        // SAFETY: the shim returns a pointer to its thread-local NUL-terminated string (never
        // NULL), valid until its next call on this thread; it is copied at once.
        unsafe {
            let p = (self.last_error)();
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        }
    }

    /// A shim status as a result.
    fn check(&self, rc: c_int, what: &str) -> Result<(), String> {
        if rc == 0 {
            Ok(())
        } else {
            Err(format!("{what}: {}", self.last_error()))
        }
    }
}

static SHIM: OnceLock<Result<Shim, String>> = OnceLock::new();

fn shim() -> Result<&'static Shim, String> {
    SHIM.get_or_init(|| load().map_err(|e| format!("CUDA graphs unavailable: {e}")))
        .as_ref()
        .map_err(Clone::clone)
}

/// Whether CUDA graphs can be used in this process, or why not ("CUDA graphs unavailable: ...").
/// Loads the shim on first use (after loading libtorch's CUDA library).
pub fn availability() -> Result<(), String> {
    shim().map(|_| ())
}

fn load() -> Result<Shim, String> {
    if SHIM_BYTES.is_empty() {
        return Err(format!("the shim was not built ({SHIM_BUILD})"));
    }
    let cuda = crate::device::init();
    if !tch::Cuda::is_available() {
        return Err(format!(
            "CUDA is not usable ({})",
            cuda.error.as_deref().unwrap_or("no CUDA device")
        ));
    }
    let handle = open_shim()?;
    // SAFETY: each field's type is the signature its symbol has in csrc/cuda_graph_shim.cpp
    // (extern "C"); the symbols come from the shim just loaded, never unloaded.
    let shim = unsafe {
        Shim {
            last_error: function(handle, c"ctmask_graph_last_error")?,
            torch_version: function(handle, c"ctmask_graph_torch_version")?,
            graph_new: function(handle, c"ctmask_graph_new")?,
            graph_free: function(handle, c"ctmask_graph_free")?,
            stream_begin: function(handle, c"ctmask_stream_begin")?,
            stream_end: function(handle, c"ctmask_stream_end")?,
            capture_begin: function(handle, c"ctmask_graph_capture_begin")?,
            capture_end: function(handle, c"ctmask_graph_capture_end")?,
            capture_abort: function(handle, c"ctmask_graph_capture_abort")?,
            replay: function(handle, c"ctmask_graph_replay")?,
        }
    };
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let built = unsafe { CStr::from_ptr((shim.torch_version)()) }
        .to_string_lossy()
        .into_owned();
    if let Some(loaded) = loaded_torch_version()
        && major_minor(&loaded) != major_minor(&built)
    {
        return Err(format!(
            "the shim was built for libtorch {built}, this process runs libtorch {loaded}"
        ));
    }
    Ok(shim)
}

/// `2.11.0+cu130` -> `2.11`.
fn major_minor(v: &str) -> String {
    v.split(['.', '+']).take(2).collect::<Vec<_>>().join(".")
}

/// The version of the libtorch in this process, from `torch/version.py` next to its library
/// directory (a pip install); None for a libtorch without it.
fn loaded_torch_version() -> Option<String> {
    let dir = crate::device::libtorch_loaded_dir()?;
    let text = std::fs::read_to_string(std::path::Path::new(&dir).join("../version.py")).ok()?;
    text.lines()
        .find(|l| l.starts_with("__version__"))
        .and_then(|l| l.split('\'').nth(1).map(str::to_string))
}

/// A function of the shim as a typed function pointer.
///
/// # Safety
/// `F` must be an `unsafe extern "C" fn` type matching the symbol's C signature.
unsafe fn function<F: Copy>(handle: *mut c_void, name: &CStr) -> Result<F, String> {
    let p = symbol(handle, name)?;
    assert_eq!(size_of::<F>(), size_of::<*mut c_void>());
    // SAFETY: F is a function pointer type of the same size (checked) matching the symbol.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
}

/// dlsym, with dlerror's message on failure.
fn symbol(handle: *mut c_void, name: &CStr) -> Result<*mut c_void, String> {
    // SAFETY: handle is a live dlopen handle (never closed) and name a NUL-terminated string.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if p.is_null() {
        Err(format!("{}: {}", name.to_string_lossy(), dl_error()))
    } else {
        Ok(p)
    }
}

fn dl_error() -> String {
    // SAFETY: dlerror returns a thread-local C string or NULL.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown dlopen error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// dlopen a path; the handle is kept for the life of the process.
fn dlopen(path: &str) -> Result<*mut c_void, String> {
    let c = std::ffi::CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated path; the shim's initialisers only set up C++ statics.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() { Err(dl_error()) } else { Ok(h) }
}

/// Load the embedded shim: from a memfd, else from a private temporary file.
fn open_shim() -> Result<*mut c_void, String> {
    let memfd_error = match open_from_memfd() {
        Ok(h) => return Ok(h),
        Err(e) => e,
    };
    open_from_temp_file().map_err(|e| format!("loading the shim: memfd: {memfd_error}; temporary file: {e}"))
}

fn open_from_memfd() -> Result<*mut c_void, String> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let name = c"ctmask_cuda_graph";
    // MFD_EXEC (Linux 6.3+) keeps the file executable where vm.memfd_noexec would seal it;
    // older kernels refuse the flag, so retry without it.
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_EXEC) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    }
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a new descriptor owned by nothing else; the File closes it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(SHIM_BYTES)
        .map_err(|e| format!("writing the memfd: {e}"))?;
    // The mapping made by dlopen outlives the descriptor, closed when `file` drops.
    dlopen(&format!("/proc/self/fd/{fd}"))
}

fn open_from_temp_file() -> Result<*mut c_void, String> {
    use std::io::Write;
    let mut file = tempfile::Builder::new()
        .prefix("ctmask_cuda_graph")
        .suffix(".so")
        .tempfile()
        .map_err(|e| e.to_string())?;
    file.write_all(SHIM_BYTES)
        .and_then(|()| file.flush())
        .map_err(|e| e.to_string())?;
    let path = file
        .path()
        .to_str()
        .ok_or("non-UTF-8 temporary path")?
        .to_string();
    // The file is deleted when `file` drops; the loaded library stays mapped.
    dlopen(&path)
}

/// The message of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// A captured CUDA graph with its static input and output tensors.
///
/// Replays read the static inputs and overwrite the static outputs in place: the tensors
/// [`CapturedGraph::run`] returns share memory with the graph and are overwritten by the next
/// replay (copy them to keep them).
pub struct CapturedGraph {
    shim: &'static Shim,
    handle: NonNull<c_void>,
    device: Device,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

// SAFETY: the graph handle is owned by this value alone and a CUDA graph has no thread
// affinity (a replay uses the calling thread's current stream); the tensors are Send. It is not
// Sync: replays must not run concurrently.
unsafe impl Send for CapturedGraph {}

impl std::fmt::Debug for CapturedGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturedGraph")
            .field("device", &self.device)
            .field(
                "inputs",
                &self.inputs.iter().map(Tensor::size).collect::<Vec<_>>(),
            )
            .field(
                "outputs",
                &self.outputs.iter().map(Tensor::size).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl CapturedGraph {
    /// Capture `f` on `inputs` (static input buffers owned by the graph, on `device`; their
    /// shapes are fixed): `warmup` runs on a side stream, then one capture, all under
    /// `no_grad`, in [`CaptureMode::ThreadLocal`]. The graph's static outputs are what the
    /// captured call of `f` returned. `f` must be capturable: no host synchronisation
    /// (`.item()`, `nonzero`, data-dependent shapes, copies to the CPU). A failure (a panic in
    /// `f` included) ends capture mode cleanly and comes back as an error, so the caller can
    /// carry on eagerly.
    pub fn capture(
        device: Device,
        inputs: Vec<Tensor>,
        warmup: usize,
        f: impl Fn(&[Tensor]) -> Vec<Tensor>,
    ) -> Result<Self, String> {
        Self::capture_with_mode(device, inputs, warmup, CaptureMode::default(), f)
    }

    /// [`CapturedGraph::capture`] with a chosen [`CaptureMode`].
    pub fn capture_with_mode(
        device: Device,
        inputs: Vec<Tensor>,
        warmup: usize,
        mode: CaptureMode,
        f: impl Fn(&[Tensor]) -> Vec<Tensor>,
    ) -> Result<Self, String> {
        let Device::Cuda(index) = device else {
            return Err(format!("CUDA graphs need a CUDA device, not {device:?}"));
        };
        let shim = shim()?;
        if let Some((i, t)) = inputs.iter().enumerate().find(|(_, t)| t.device() != device) {
            return Err(format!(
                "input {i} is on {:?}, the graph on {device:?}",
                t.device()
            ));
        }
        let _no_grad = tch::no_grad_guard();
        // SAFETY: graph_new has no preconditions; NULL means failure.
        let raw = unsafe { (shim.graph_new)() };
        let handle = NonNull::new(raw).ok_or_else(|| format!("creating the graph: {}", shim.last_error()))?;
        // From here on, Drop frees the graph on every error path.
        let mut graph = CapturedGraph {
            shim,
            handle,
            device,
            inputs,
            outputs: Vec::new(),
        };
        let h = graph.handle.as_ptr();
        let device_index = index as c_int;

        // Warm-up on a side stream (cuDNN/cuBLAS handles, workspaces, lazy initialisation).
        // SAFETY: h is this graph's live handle (for all the shim calls below).
        shim.check(unsafe { (shim.stream_begin)(h, device_index) }, "warm-up stream")?;
        let warm = catch_unwind(AssertUnwindSafe(|| {
            for _ in 0..warmup {
                drop(f(&graph.inputs));
            }
        }));
        // SAFETY: as above.
        let ended = shim.check(unsafe { (shim.stream_end)(h) }, "warm-up stream end");
        if let Err(p) = warm {
            return Err(format!("warm-up failed: {}", panic_message(&*p)));
        }
        ended?;

        // The capture, on a side stream too.
        // SAFETY: as above.
        shim.check(unsafe { (shim.stream_begin)(h, device_index) }, "capture stream")?;
        // SAFETY: as above; the shim cleans up itself when capture_begin fails.
        if let Err(e) = shim.check(unsafe { (shim.capture_begin)(h, mode.code()) }, "capture begin") {
            // SAFETY: as above.
            let _ = unsafe { (shim.stream_end)(h) };
            return Err(e);
        }
        let captured = catch_unwind(AssertUnwindSafe(|| f(&graph.inputs)));
        let result = match captured {
            // SAFETY: as above.
            Ok(outputs) => match shim.check(unsafe { (shim.capture_end)(h) }, "capture end") {
                Ok(()) => Ok(outputs),
                Err(e) => Err(e),
            },
            Err(p) => Err(format!("capture failed: {}", panic_message(&*p))),
        };
        let result = result.map_err(|e| {
            // SAFETY: as above.
            match shim.check(unsafe { (shim.capture_abort)(h) }, "cleanup") {
                Ok(()) => e,
                Err(cleanup) => format!("{e}; {cleanup}"),
            }
        });
        // SAFETY: as above; the capture is closed (ended or aborted) by now.
        let ended = shim.check(unsafe { (shim.stream_end)(h) }, "capture stream end");
        graph.outputs = result?;
        ended?;
        Ok(graph)
    }

    /// Copy `inputs` into the static inputs (same count, shapes and kinds; any device), replay
    /// the graph on the current stream and return shallow clones of the static outputs. They
    /// are overwritten by the next replay: copy them to keep them.
    pub fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, String> {
        if inputs.len() != self.inputs.len() {
            return Err(format!(
                "{} inputs given, the graph takes {}",
                inputs.len(),
                self.inputs.len()
            ));
        }
        for (i, (src, dst)) in inputs.iter().zip(&self.inputs).enumerate() {
            if src.size() != dst.size() || src.kind() != dst.kind() {
                return Err(format!(
                    "input {i} is {:?} {:?}, the graph takes {:?} {:?}",
                    src.kind(),
                    src.size(),
                    dst.kind(),
                    dst.size()
                ));
            }
        }
        let _no_grad = tch::no_grad_guard();
        for (src, dst) in inputs.iter().zip(&self.inputs) {
            let mut dst = dst.shallow_clone();
            dst.f_copy_(src).map_err(|e| format!("copying an input: {e}"))?;
        }
        // SAFETY: the handle is live and holds a successful capture.
        self.shim
            .check(unsafe { (self.shim.replay)(self.handle.as_ptr()) }, "replay")?;
        Ok(self.outputs.iter().map(Tensor::shallow_clone).collect())
    }

    /// The static input tensors (the graph reads them on every replay).
    pub fn inputs(&self) -> &[Tensor] {
        &self.inputs
    }

    /// The static output tensors (every replay overwrites them).
    pub fn outputs(&self) -> &[Tensor] {
        &self.outputs
    }

    /// The device the graph was captured on.
    pub fn device(&self) -> Device {
        self.device
    }
}

impl Drop for CapturedGraph {
    fn drop(&mut self) {
        self.outputs.clear();
        // SAFETY: the handle is live and freed exactly once, here.
        unsafe { (self.shim.graph_free)(self.handle.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn embedded_shim_is_an_elf_shared_object_when_built() {
        if SHIM_BUILD == "built" {
            assert!(SHIM_BYTES.starts_with(b"\x7fELF"), "not an ELF file");
            // e_type (little-endian u16 at 16) is ET_DYN.
            assert_eq!(&SHIM_BYTES[16..18], &[3, 0]);
        } else {
            assert!(SHIM_BYTES.is_empty());
            let e = availability().unwrap_err();
            assert!(e.contains(SHIM_BUILD), "{e}");
        }
    }

    #[test]
    fn version_prefix() {
        assert_eq!(major_minor("2.11.0+cu130"), "2.11");
        assert_eq!(major_minor("2.11.0"), "2.11");
        assert_ne!(major_minor("2.10.1"), major_minor("2.11.0"));
    }

    #[test]
    fn without_cuda_availability_and_capture_are_errors() {
        crate::device::init();
        if tch::Cuda::is_available() {
            return;
        }
        let e = availability().unwrap_err();
        assert!(e.starts_with("CUDA graphs unavailable: "), "{e}");
        assert!(e.len() > "CUDA graphs unavailable: ".len() + 5, "{e}");
        // Asked twice: the same cached answer.
        assert_eq!(availability().unwrap_err(), e);
        let x = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let r = CapturedGraph::capture(Device::Cuda(0), vec![x.shallow_clone()], 1, |t| vec![t[0].relu()]);
        assert_eq!(r.unwrap_err(), e);
        let r = CapturedGraph::capture(Device::Cpu, vec![x], 1, |t| vec![t[0].relu()]);
        assert!(r.unwrap_err().contains("need a CUDA device"));
    }

    #[cfg(feature = "gpu-tests")]
    fn conv_relu(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
        x.conv2d(w, Some(b), [1, 1], [1, 1], [1, 1], 1).relu()
    }

    #[cfg(feature = "gpu-tests")]
    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[cfg(feature = "gpu-tests")]
    #[test]
    fn captured_conv_relu_matches_eager_and_follows_new_inputs() {
        let dev = Device::Cuda(0);
        crate::device::init();
        assert!(tch::Cuda::is_available(), "gpu-tests need CUDA");
        crate::device::disable_tf32();
        availability().unwrap();
        tch::manual_seed(0);
        let opts = (Kind::Float, dev);
        let w = Tensor::randn([8, 3, 3, 3], opts) * 0.2;
        let b = Tensor::randn([8], opts) * 0.1;
        let g = CapturedGraph::capture(dev, vec![Tensor::zeros([2, 3, 32, 32], opts)], 2, |x| {
            vec![conv_relu(&x[0], &w, &b)]
        })
        .unwrap();
        assert_eq!(g.outputs().len(), 1);
        let x1 = Tensor::randn([2, 3, 32, 32], opts);
        let x2 = Tensor::randn([2, 3, 32, 32], opts);
        let y1 = g.run(&[&x1]).unwrap()[0].copy();
        let d1 = max_abs_diff(&y1, &conv_relu(&x1, &w, &b));
        assert!(d1 < 1e-5, "graph vs eager: {d1}");
        let y2 = g.run(&[&x2]).unwrap()[0].copy();
        let d2 = max_abs_diff(&y2, &conv_relu(&x2, &w, &b));
        assert!(d2 < 1e-5, "graph vs eager, second input: {d2}");
        assert!(max_abs_diff(&y1, &y2) > 1e-3, "replays ignored the new input");
        // The inputs may come from the CPU; wrong shapes and kinds are refused.
        let y3 = g.run(&[&x1.to_device(Device::Cpu)]).unwrap()[0].copy();
        assert!(max_abs_diff(&y3, &y1) < 1e-6);
        assert!(g.run(&[&Tensor::zeros([1, 3, 32, 32], opts)]).is_err());
        assert!(g.run(&[&x1.to_kind(Kind::Double)]).is_err());
        assert!(g.run(&[]).is_err());
    }

    #[cfg(feature = "gpu-tests")]
    #[test]
    fn failed_capture_leaves_cuda_usable() {
        let dev = Device::Cuda(0);
        crate::device::init();
        assert!(tch::Cuda::is_available(), "gpu-tests need CUDA");
        let opts = (Kind::Float, dev);
        // nonzero synchronises with the host: refused while capturing.
        let r = CapturedGraph::capture(dev, vec![Tensor::ones([16], opts)], 1, |x| vec![x[0].nonzero()]);
        let e = r.unwrap_err();
        assert!(e.contains("capture failed"), "{e}");
        assert!(!e.contains("cleanup"), "cleanup problem: {e}");
        // Eager work and a new capture still work.
        let x = Tensor::ones([16], opts);
        assert_eq!((&x * 2.0).sum(Kind::Float).double_value(&[]), 32.0);
        let g = CapturedGraph::capture(dev, vec![x.zeros_like()], 1, |t| vec![&t[0] * 3.0]).unwrap();
        let y = g.run(&[&x]).unwrap();
        assert_eq!(y[0].sum(Kind::Float).double_value(&[]), 48.0);
    }
}
