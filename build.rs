//! Build script. With the `cuda` feature it compiles the CUDA kernels to PTX (embedded by the library with
//! include_str!); without it there is nothing to do, and no CUDA toolkit is needed.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_ptx("src/mine/cuda/topk.cu", "mine_topk.ptx");
    }
}

/// Compiles `source` to `$OUT_DIR/output` with nvcc (`$NVCC`, else `$CUDA_ROOT/bin/nvcc`, else `nvcc` on the PATH)
/// for the virtual architecture `compute_$CUDA_COMPUTE_CAP` (candle's variable; default 75, the oldest that CUDA 13
/// supports). PTX is compiled for the actual GPU when the module is loaded, so one build runs on that architecture
/// and every newer one.
fn compile_ptx(source: &str, output: &str) {
    for variable in ["NVCC", "CUDA_ROOT", "CUDA_COMPUTE_CAP"] {
        println!("cargo::rerun-if-env-changed={variable}");
    }
    println!("cargo::rerun-if-changed={source}");
    let nvcc = env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| env::var_os("CUDA_ROOT").map(|root| PathBuf::from(root).join("bin/nvcc")))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let compute_cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "75".to_owned());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join(output);
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{compute_cap}"))
        .arg(source)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {}: {error} (set NVCC or CUDA_ROOT)",
                nvcc.display()
            )
        });
    assert!(
        status.success(),
        "{} failed on {source} ({status})",
        nvcc.display()
    );
}
