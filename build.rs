//! Build script: give every binary and test an rpath to the libtorch that torch-sys linked, so
//! they run with no LD_LIBRARY_PATH (RUNPATH: an LD_LIBRARY_PATH, when set, still wins, which is
//! how the same binary finds another machine's CUDA-enabled libtorch).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-env=CTMASK_LIBTORCH_LIB={dir}");
    }
}
