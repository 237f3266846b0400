//! A run's files as a test compares them: every file under a directory with its bytes, and which files record the
//! run itself (when and where it ran) rather than what it computed.

use std::collections::BTreeMap;
use std::path::Path;

/// Every file under `dir`, by its path relative to `dir` (`/`-separated), with its bytes.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Files that say when and where a run happened rather than what it computed: the manifests (when the stage ran,
/// where its inputs were, and a fingerprint that tests compare where two runs' configurations should agree) and
/// the trainer's wall-clock throughput.
pub fn records_the_run_itself(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    (file.starts_with("manifest") && file.ends_with(".json")) || file == "train_timing.jsonl"
}
