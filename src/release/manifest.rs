//! `release.json`: what a release holds (every file with its size and sha256), what it was made from, and the
//! score of the check pair it must reproduce when loaded back.
//!
//! The file lists every other file of the release, so that `umrank verify` can name each one that is missing,
//! extra or changed. It holds no timestamps: the same inputs give a byte-identical release.

use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::check::CheckPair;
use super::lineage::Lineage;
use super::provenance::Provenance;
use super::ReleaseError;
use crate::digest::sha256_file;
use crate::models::qwen2_vl::PairScore;
use crate::progress;
use crate::schema::outputs;

/// Version of the release.json layout; verify refuses layouts it does not know. Format 2 added `lineage`; a
/// format-1 release reads with an empty one, so that it can still be the baseline of a gate.
pub const RELEASE_FORMAT: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    pub format: u32,
    pub umrank_version: String,
    pub kind: ReleaseKind,
    /// The model the release derives from, by name (a Hub id when configured, else its local path); none for a
    /// model trained from a random initialisation.
    pub base_model_name: Option<String>,
    /// For an adapter release, the model the adapter applies to.
    pub base_model: Option<BaseModel>,
    /// Whether `merged/` holds merged weights.
    pub merged: bool,
    /// Every file of the release but release.json, sorted by path.
    pub files: Vec<FileEntry>,
    pub provenance: Provenance,
    /// The data snapshot, and the release this one replaced.
    #[serde(default)]
    pub lineage: Lineage,
    pub check: ScoreCheck,
}

/// What the train stage produced, and so what the release holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseKind {
    /// A LoRA adapter in PEFT format for a base model that is not part of the release.
    Adapter,
    /// A fully fine-tuned model: its weights are in the release.
    Full,
}

/// The model an adapter applies to. Its weights are not part of the release; their hashes are, so that verify
/// can tell whether the base it loads is the one the adapter was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseModel {
    /// The local directory the release was made from, where verify looks for it unless told otherwise.
    pub path: PathBuf,
    /// config.json and the weight files, relative to `path`.
    pub files: Vec<FileEntry>,
}

/// One file: path relative to its directory (with `/` separators), size and content hash.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The pair verify scores, and what the trained model (base + adapter, or the fine-tuned weights) scored on it
/// when the release was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreCheck {
    pub pair: CheckPair,
    pub expected: PairScore,
    /// Largest accepted difference, relative to max(1, |expected|), of each of p_yes, z_yes and z_no, when the
    /// release is loaded back: the same computation as when it was made.
    pub tolerance: f32,
    /// The same for the merged weights, which are rounded once to the base's dtype (loose for 16-bit bases).
    pub merged_tolerance: Option<f32>,
}

impl ReleaseManifest {
    pub fn read(dir: &Path) -> Result<Self, ReleaseError> {
        let path = dir.join(outputs::release::MANIFEST);
        let text = fs::read_to_string(&path).map_err(ReleaseError::io(&path))?;
        let manifest: Self = serde_json::from_str(&text)
            .map_err(|e| ReleaseError::invalid(&path, format!("not a release manifest: {e}")))?;
        if !(1..=RELEASE_FORMAT).contains(&manifest.format) {
            return Err(ReleaseError::invalid(
                &path,
                format!(
                    "release format {} is not one this umrank reads (1 to {RELEASE_FORMAT})",
                    manifest.format
                ),
            ));
        }
        let base_files = manifest.base_model.iter().flat_map(|b| &b.files);
        for entry in manifest.files.iter().chain(base_files) {
            check_relative(&entry.path).map_err(|reason| ReleaseError::invalid(&path, reason))?;
        }
        Ok(manifest)
    }

    pub fn write(&self, dir: &Path) -> Result<(), ReleaseError> {
        let path = dir.join(outputs::release::MANIFEST);
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| ReleaseError::invalid(&path, format!("cannot serialise: {e}")))?;
        fs::write(&path, json + "\n").map_err(ReleaseError::io(&path))
    }
}

/// A listed path must stay inside the directory it is relative to, or verify could be made to hash any file.
fn check_relative(path: &str) -> Result<(), String> {
    let escapes = Path::new(path)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)));
    if path.is_empty() || escapes {
        Err(format!("listed path `{path}` is not a plain relative path"))
    } else {
        Ok(())
    }
}

/// Every file under `dir` but release.json, relative, sorted, with `/` separators.
pub fn list_files(dir: &Path) -> Result<Vec<String>, ReleaseError> {
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let here = dir.join(&relative);
        for entry in fs::read_dir(&here).map_err(ReleaseError::io(&here))? {
            let entry = entry.map_err(ReleaseError::io(&here))?;
            let kind = entry.file_type().map_err(ReleaseError::io(entry.path()))?;
            let path = relative.join(entry.file_name());
            if kind.is_dir() {
                pending.push(path);
            } else if path != Path::new(outputs::release::MANIFEST) {
                files.push(slash_path(&path));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Size and sha256 of each named file under `dir`, with a progress bar: model weights take a while to hash.
pub fn describe_files(dir: &Path, names: &[String]) -> Result<Vec<FileEntry>, ReleaseError> {
    let bar = progress::bar(names.len() as u64, "hashing");
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(name);
        let bytes = fs::metadata(&path).map_err(ReleaseError::io(&path))?.len();
        let sha256 = sha256_file(&path).map_err(ReleaseError::io(&path))?;
        entries.push(FileEntry {
            path: name.clone(),
            bytes,
            sha256,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(entries)
}

fn slash_path(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}
