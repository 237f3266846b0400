//! What `umrank demo` needs besides its pipeline: the files its tiny rerankers read, compiled into the binary so
//! that the demo runs from any directory and after `cargo install`, and the quick variant that checks an install.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use umrank::pipeline::PipelineConfig;

/// Where the demo pipeline file points its tiny rerankers' tokenizer (a directory of the repository).
const REPOSITORY_TOKENIZER: &str = "tests/fixtures/tokenizer/qwen2_prefix";

/// The tokenizer's files: the Qwen2 vocabulary prefix the tests use, a few hundred kilobytes.
const TOKENIZER_FILES: [(&str, &[u8]); 2] = [
    (
        "tokenizer.json",
        include_bytes!("../../tests/fixtures/tokenizer/qwen2_prefix/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../../tests/fixtures/tokenizer/qwen2_prefix/tokenizer_config.json"),
    ),
];

/// Writes the built-in tokenizer under the workdir (`<workdir>/assets/tokenizer`) and points the stages that
/// read the repository's copy at it. Files already there with the same bytes are left alone, so a second run
/// finds every stage up to date.
pub fn provide_assets(config: &mut PipelineConfig) -> anyhow::Result<()> {
    let dir = config.workdir.join("assets").join("tokenizer");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, bytes) in TOKENIZER_FILES {
        write_if_changed(&dir.join(name), bytes)?;
    }
    let location = toml::Value::String(dir.to_string_lossy().into_owned());
    for spec in &mut config.stages {
        if let Some(tokenizer) = spec.table.get_mut("tokenizer") {
            if tokenizer.as_str() == Some(REPOSITORY_TOKENIZER) {
                *tokenizer = location.clone();
            }
        }
    }
    Ok(())
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if fs::read(path).is_ok_and(|existing| existing == bytes) {
        return Ok(());
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The demo at toy size, to check that an install works in seconds: the small world (75 queries), one embedder
/// epoch, no false-negative filter (in the small world's 60-document pools it leaves a query without a usable
/// negative), four training steps per reranker, and its own workdir (`runs/demo-quick`) so that it never touches
/// a real demo run. Its figures mean nothing.
pub fn quicken(config: &mut PipelineConfig) {
    let mut no_filter = toml::Table::new();
    no_filter.insert("relative_margin".into(), false.into());
    let settings: [(&str, &str, toml::Value); 4] = [
        ("world", "size", "small".into()),
        ("embedder", "epochs", 1.into()),
        ("mine", "filter", no_filter.into()),
        ("train", "max_steps", 4.into()),
    ];
    for spec in &mut config.stages {
        for (kind, key, value) in &settings {
            if spec.kind == *kind {
                spec.table.insert((*key).to_string(), value.clone());
            }
        }
    }
    config.workdir = PathBuf::from("runs/demo-quick");
}
