//! Running the built `umrank` binary from the repository root, as a user would.

use std::process::Command;

/// Runs `umrank ARGS` in the repository root: whether it succeeded, its stdout and its stderr.
pub fn umrank(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_umrank"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the umrank binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `umrank ARGS`, which must succeed (the failure shows its stderr): its stdout.
pub fn umrank_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = umrank(args);
    assert!(ok, "umrank {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// Runs `umrank ARGS`, which must fail: its stderr.
pub fn umrank_fails(args: &[&str]) -> String {
    let (ok, _, stderr) = umrank(args);
    assert!(!ok, "umrank {args:?} succeeded");
    stderr
}
