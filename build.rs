//! Build script: give every binary and test an rpath to the libtorch that torch-sys linked, so
//! they run with no LD_LIBRARY_PATH (RUNPATH: an LD_LIBRARY_PATH, when set, still wins, which is
//! how the same binary finds another machine's CUDA-enabled libtorch).
//!
//! It also compiles the CUDA graph shim (`csrc/cuda_graph_shim.cpp`) into
//! `$OUT_DIR/libctmask_cuda_graph.so`, which `src/cuda_graph.rs` embeds and loads at run time.
//! Where that cannot be built (no libtorch_cuda, no headers, no C++ compiler) the file is left
//! empty and the crate builds anyway, with CUDA graphs unavailable; `CTMASK_CUDA_GRAPH_SHIM`
//! tells the crate which (`built` or the reason).
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-env=CTMASK_LIBTORCH_LIB={dir}");
    }
    build_cuda_graph_shim();
}

const SHIM_SOURCE: &str = "csrc/cuda_graph_shim.cpp";
const SHIM_NAME: &str = "libctmask_cuda_graph.so";

fn build_cuda_graph_shim() {
    println!("cargo:rerun-if-changed={SHIM_SOURCE}");
    println!("cargo:rerun-if-env-changed=CXX");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let out = out_dir.join(SHIM_NAME);
    let status = match compile_shim(&out_dir, &out) {
        Ok(()) => "built".to_string(),
        Err(reason) => {
            let reason: String = reason.lines().next().unwrap_or("").chars().take(300).collect();
            println!("cargo:warning=CUDA graph shim not built ({reason}): CUDA graphs unavailable");
            std::fs::write(&out, b"").expect("write the empty CUDA graph shim");
            reason
        }
    };
    println!("cargo:rustc-env=CTMASK_CUDA_GRAPH_SHIM={status}");
}

/// Compile the shim with the system C++ compiler against libtorch's headers and CUDA libraries.
fn compile_shim(out_dir: &Path, out: &Path) -> Result<(), String> {
    let lib =
        PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").map_err(|_| "DEP_TCH_LIBTORCH_LIB not set")?);
    if !lib.join("libtorch_cuda.so").is_file() {
        return Err(format!("no libtorch_cuda.so in {}", lib.display()));
    }
    let torch_include = lib.join("../include");
    if !torch_include.join("ATen/cuda/CUDAGraph.h").is_file() {
        return Err(format!(
            "no ATen/cuda/CUDAGraph.h under {}",
            torch_include.display()
        ));
    }
    let cuda_include = cuda_include_dirs(&lib)
        .into_iter()
        .find(|d| d.join("cuda_runtime_api.h").is_file())
        .ok_or("cuda_runtime_api.h not found (nvidia/*/include next to torch, $CUDA_HOME)")?;
    let mut cmd = Command::new(std::env::var("CXX").unwrap_or_else(|_| "c++".into()));
    cmd.args([
        "-std=c++17",
        "-O2",
        "-fPIC",
        "-shared",
        "-D_GLIBCXX_USE_CXX11_ABI=1",
        "-Wall",
    ])
    .arg("-isystem")
    .arg(&torch_include)
    .arg("-isystem")
    .arg(&cuda_include);
    // The runtime wheel ships the API headers but not the toolkit's crt/ headers they include:
    // stand-ins with the host-only qualifier macros are enough for a host C++ compiler.
    if !cuda_include.join("crt/host_defines.h").is_file() {
        let stub = out_dir.join("cuda_crt_stub");
        write_crt_stub(&stub).map_err(|e| format!("writing crt stand-ins: {e}"))?;
        cmd.arg("-isystem").arg(&stub);
    }
    let tmp = out.with_extension("so.tmp");
    cmd.arg(SHIM_SOURCE)
        .arg("-o")
        .arg(&tmp)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-soname,{SHIM_NAME}"))
        // Every symbol of the shim must resolve in these libraries (checked now, not at dlopen);
        // their own dependencies (cuBLAS, cuDNN...) may be absent on a build machine.
        .args(["-Wl,-z,defs", "-Wl,--allow-shlib-undefined"])
        .args(["-ltorch_cuda", "-lc10_cuda", "-lc10"]);
    let output = cmd
        .output()
        .map_err(|e| format!("running the C++ compiler: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .find(|l| l.contains("error"))
            .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
            .map(str::to_string)
            .unwrap_or_else(|| output.status.to_string());
        return Err(format!("compiler failed: {first}"));
    }
    std::fs::rename(&tmp, out).map_err(|e| format!("moving the shim into place: {e}"))
}

/// Where the CUDA runtime headers may be: the `nvidia/*/include` wheels next to torch, then a
/// CUDA toolkit.
fn cuda_include_dirs(lib: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(lib.join("../../nvidia"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("include"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    if let Ok(home) = std::env::var("CUDA_HOME") {
        dirs.push(PathBuf::from(home).join("include"));
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    dirs
}

/// Minimal `crt/host_config.h` and `crt/host_defines.h` for host-only compilation.
fn write_crt_stub(dir: &Path) -> std::io::Result<()> {
    let crt = dir.join("crt");
    std::fs::create_dir_all(&crt)?;
    std::fs::write(
        crt.join("host_config.h"),
        "/* ctmask stand-in: nothing is needed for host-only compilation. */\n#pragma once\n",
    )?;
    let defines = [
        ("__no_return__", "__attribute__((noreturn))"),
        ("__noinline__", "__attribute__((noinline))"),
        ("__forceinline__", "__inline__ __attribute__((always_inline))"),
        ("__align__(n)", "__attribute__((aligned(n)))"),
        ("__thread__", "__thread"),
        ("__import__", ""),
        ("__export__", ""),
        ("__cdecl__", ""),
        ("__annotate__(a)", "__attribute__((a))"),
        ("__location__(a)", ""),
        ("CUDARTAPI", ""),
        ("CUDARTAPI_CDECL", ""),
        ("__specialization_static", ""),
        ("__host__", ""),
        ("__device__", ""),
        ("__global__", ""),
        ("__shared__", ""),
        ("__constant__", ""),
        ("__managed__", ""),
        ("__launch_bounds__(...)", ""),
        ("__grid_constant__", ""),
        ("__builtin_align__(a)", "__attribute__((aligned(a)))"),
        ("__cudart_builtin__", ""),
        ("__device_builtin__", ""),
        ("__device_builtin_texture_type__", ""),
        ("__device_builtin_surface_type__", ""),
        ("__CUDA_ALIGN__(n)", "__attribute__((aligned(n)))"),
        ("__nv_pure__", "__attribute__((pure))"),
    ];
    let mut text = String::from(
        "/* ctmask stand-in for the CUDA toolkit's crt/host_defines.h (host-only). */\n#pragma once\n",
    );
    for (name, value) in defines {
        text.push_str(&format!(
            "#ifndef {0}\n#define {1} {value}\n#endif\n",
            macro_name(name),
            name
        ));
    }
    std::fs::write(crt.join("host_defines.h"), text)
}

/// `__align__(n)` -> `__align__`.
fn macro_name(def: &str) -> &str {
    def.split('(').next().unwrap_or(def)
}
