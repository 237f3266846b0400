//! `index.json`: what a trainer or exporter reads first. It lists the shards in training order with their files,
//! row and group counts and sha256, says how prompts are stored, and where the corpus and images the rows key
//! into are.

use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ShardsError;
use crate::dataset::{Dataset, WrittenPart};

/// File name of the index inside the stage directory.
pub const INDEX: &str = "index.json";

/// The version of the layout below; a reader refuses an index of another version.
pub const INDEX_FORMAT: u32 = 1;

/// The one prompt mode umrank writes: prompts as parts, rendered by the trainer with its model's template.
pub const PROMPT_PARTS: &str = "parts";

/// The whole index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardIndex {
    pub format: u32,
    /// How prompts are stored: `parts` (instruction, query text and image id, document text and image id).
    pub prompt: String,
    pub seed: u64,
    /// Whether the groups were shuffled (by `seed`), or kept in the order of the negatives dataset.
    pub shuffled: bool,
    pub groups: u64,
    pub sft_rows: u64,
    pub cl_rows: u64,
    /// The fewest and most negatives of any group (equal when no query was short of negatives).
    pub min_negatives: u64,
    pub max_negatives: u64,
    pub max_rows_per_shard: u64,
    pub max_bytes_per_shard: u64,
    /// The corpus dataset the dids key into, relative to the index's directory (or absolute).
    pub corpus: String,
    /// The images dataset the image ids key into, relative to the index's directory (or absolute).
    pub images: String,
    /// The shards in training order.
    pub shards: Vec<ShardEntry>,
}

/// Shard i: the same groups in its sft file and its cl file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    pub groups: u64,
    pub sft: FileEntry,
    pub cl: FileEntry,
}

/// One Parquet file of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the index's directory, with `/` separators.
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

impl FileEntry {
    /// The entry of a written part under `dir`.
    pub fn of(dir: &Path, part: &WrittenPart) -> Self {
        let relative = part.path.strip_prefix(dir).unwrap_or(&part.path);
        Self {
            file: slash_path(relative),
            rows: part.rows,
            bytes: part.bytes,
            sha256: part.sha256.clone(),
        }
    }
}

impl ShardIndex {
    /// Reads `dir/index.json` and checks that the files it lists are there with the sizes it records (a cheap
    /// guard against a directory that was half copied or written over since).
    pub fn read(dir: &Path) -> Result<Self, ShardsError> {
        let path = dir.join(INDEX);
        let bytes = fs::read(&path).map_err(ShardsError::io(&path))?;
        let bad = |message: String| ShardsError::Index {
            path: path.clone(),
            message,
        };
        let index: Self = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if index.format != INDEX_FORMAT {
            return Err(bad(format!(
                "index format {} is not the one this umrank reads ({INDEX_FORMAT})",
                index.format
            )));
        }
        for file in index.shards.iter().flat_map(|s| [&s.sft, &s.cl]) {
            let at = dir.join(&file.file);
            let size = fs::metadata(&at).map_err(ShardsError::io(&at))?.len();
            if size != file.bytes {
                return Err(bad(format!(
                    "{} has {size} bytes, the index says {}: the shards changed after the index was written",
                    at.display(),
                    file.bytes
                )));
            }
        }
        Ok(index)
    }

    /// Writes `dir/index.json` through a temporary file and a rename.
    pub fn write(&self, dir: &Path) -> Result<(), ShardsError> {
        let path = dir.join(INDEX);
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| ShardsError::Index {
            path: path.clone(),
            message: e.to_string(),
        })?;
        json.push(b'\n');
        write_atomically(&path, &json)
    }

    /// The sft rows of every shard, read as one dataset in shard order.
    pub fn sft(&self, dir: &Path) -> Result<Dataset, ShardsError> {
        Ok(Dataset::open(&dir.join(super::SFT))?)
    }

    /// The cl rows of every shard, read as one dataset in shard order.
    pub fn cl(&self, dir: &Path) -> Result<Dataset, ShardsError> {
        Ok(Dataset::open(&dir.join(super::CL))?)
    }

    pub fn corpus_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.corpus)
    }

    pub fn images_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.images)
    }
}

/// Writes `bytes` to `path` via a hidden temporary sibling and a rename, so the file appears whole or not at all.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ShardsError> {
    crate::atomic::write_atomically(path, bytes).map_err(|e| ShardsError::io(e.path)(e.source))
}

/// `target` as seen from directory `base`: relative when both resolve under a common root (so a work directory
/// can move as a whole), absolute otherwise.
pub fn relative_to(base: &Path, target: &Path) -> Result<String, ShardsError> {
    let base = fs::canonicalize(base).map_err(ShardsError::io(base))?;
    let target = fs::canonicalize(target).map_err(ShardsError::io(target))?;
    let common = base
        .components()
        .zip(target.components())
        .take_while(|(a, b)| a == b)
        .count();
    if common == 0 {
        return Ok(slash_path(&target));
    }
    let mut relative = PathBuf::new();
    for _ in base.components().skip(common) {
        relative.push("..");
    }
    for part in target.components().skip(common) {
        relative.push(part);
    }
    if relative.as_os_str().is_empty() {
        relative.push(".");
    }
    Ok(slash_path(&relative))
}

fn slash_path(path: &Path) -> String {
    let mut out = String::new();
    for component in path.components() {
        match component {
            Component::RootDir => out.push('/'),
            Component::Prefix(prefix) => out.push_str(&prefix.as_os_str().to_string_lossy()),
            part => {
                if !out.is_empty() && !out.ends_with('/') {
                    out.push('/');
                }
                out.push_str(&part.as_os_str().to_string_lossy());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_directory() {
        let dir = tempfile::tempdir().unwrap();
        let shards = dir.path().join("work/shards");
        let images = dir.path().join("work/ingest/images");
        fs::create_dir_all(&shards).unwrap();
        fs::create_dir_all(&images).unwrap();
        assert_eq!(relative_to(&shards, &images).unwrap(), "../ingest/images");
        assert_eq!(relative_to(&shards, &shards).unwrap(), ".");
        let resolved =
            fs::canonicalize(shards.join(relative_to(&shards, &images).unwrap())).unwrap();
        assert_eq!(resolved, fs::canonicalize(&images).unwrap());
    }
}
