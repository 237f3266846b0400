//! The CUDA selection kernel's source (src/mine/cuda/topk.cu), run on the CPU by a C++ harness
//! (tests/cuda_sim/topk_sim.cpp) that emulates blocks, barriers and warp intrinsics, against a brute-force top-k.
//! This is what checks the kernel's logic on machines without a GPU; tests/it/mine_cuda.rs checks the real thing,
//! cuBLAS products included, where one exists. Needs a C++20 compiler (`$CXX`, else `c++`).

use std::path::Path;
use std::process::Command;

#[test]
fn the_selection_kernel_source_agrees_with_brute_force() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("topk_sim");
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".to_owned());
    let built = Command::new(&compiler)
        .args(["-O2", "-std=c++20", "-pthread", "-w", "-I"])
        .arg(root.join("src/mine/cuda"))
        .arg(root.join("tests/cuda_sim/topk_sim.cpp"))
        .arg("-o")
        .arg(&binary)
        .output()
        .unwrap_or_else(|error| panic!("cannot run the C++ compiler {compiler}: {error}"));
    assert!(
        built.status.success(),
        "{compiler} failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&binary).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "kernel simulation failed ({}):\n{stdout}",
        run.status
    );
    assert!(stdout.contains("\n0 failures"), "{stdout}");
    assert!(stdout.contains("ok   plateau"), "the cases ran:\n{stdout}");
}
