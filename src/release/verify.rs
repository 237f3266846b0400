//! `umrank verify`: a release is intact when every file release.json lists is there with its size and sha256 and
//! nothing else is; it works when the base it names (same hashes) loads with the release's adapter, and the
//! merged weights load on their own, and both score the check pair as the release recorded. A full release
//! (fine-tuned weights, no adapter) must load on its own and score the pair as recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;

use super::check::score_check_pair;
use super::manifest::{
    describe_files, list_files, BaseModel, FileEntry, ReleaseKind, ReleaseManifest,
};
use super::ReleaseError;
use crate::models::qwen2_vl::PairScore;
use crate::models::reranker::RerankerParts;
use crate::schema::outputs;

/// What a successful verification checked.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub files: usize,
    pub bytes: u64,
    pub kind: ReleaseKind,
    /// The base model directory that was loaded, for an adapter release.
    pub base: Option<PathBuf>,
    pub expected: PairScore,
    /// Each variant loaded (`adapter`, `merged`, `full`) and its score of the check pair.
    pub scores: Vec<(String, PairScore)>,
}

/// Verifies the release in `dir`. An adapter release loads its base from `base` or from where release.json says
/// it was; a full release holds its weights and takes no base.
pub fn verify(
    dir: &Path,
    base: Option<&Path>,
    device: &Device,
) -> Result<VerifyReport, ReleaseError> {
    let manifest = ReleaseManifest::read(dir)?;
    check_files(dir, &manifest.files)?;
    let check = &manifest.check;
    let manifest_path = || dir.join(outputs::release::MANIFEST);
    let mut scores = Vec::new();
    let loaded_base = match (manifest.kind, &manifest.base_model) {
        (ReleaseKind::Adapter, Some(recorded)) => {
            let base = base.map_or_else(|| recorded.path.clone(), Path::to_path_buf);
            check_base(&base, recorded, &manifest.files)?;
            let adapter = score_check_pair(parts(&base, dir, Some(dir)), &check.pair, device)?;
            compare("adapter", adapter, check.expected, check.tolerance)?;
            scores.push(("adapter".to_string(), adapter));
            Some(base)
        }
        (ReleaseKind::Full, None) => {
            if let Some(base) = base {
                return Err(ReleaseError::Config(format!(
                    "{} holds a fully fine-tuned model, which loads without a base; {} is not used",
                    dir.display(),
                    base.display()
                )));
            }
            let full = score_check_pair(parts(dir, dir, None), &check.pair, device)?;
            compare("full", full, check.expected, check.tolerance)?;
            scores.push(("full".to_string(), full));
            None
        }
        (kind, _) => {
            return Err(ReleaseError::invalid(
                manifest_path(),
                format!(
                    "a {kind:?} release must record a base model exactly when it holds an adapter"
                ),
            ))
        }
    };
    if manifest.merged {
        let merged_dir = dir.join(outputs::release::MERGED);
        let tolerance = check.merged_tolerance.ok_or_else(|| {
            ReleaseError::invalid(
                manifest_path(),
                "the release has merged weights but no tolerance for them",
            )
        })?;
        let merged = score_check_pair(parts(&merged_dir, &merged_dir, None), &check.pair, device)?;
        compare("merged", merged, check.expected, tolerance)?;
        scores.push(("merged".to_string(), merged));
    }
    Ok(VerifyReport {
        files: manifest.files.len(),
        bytes: manifest.files.iter().map(|f| f.bytes).sum(),
        kind: manifest.kind,
        base: loaded_base,
        expected: check.expected,
        scores,
    })
}

/// Compares the files under `dir` with the listed ones, naming every missing, unlisted and changed file.
pub fn check_files(dir: &Path, listed: &[FileEntry]) -> Result<(), ReleaseError> {
    let present = list_files(dir)?;
    let expected: BTreeMap<&str, &FileEntry> =
        listed.iter().map(|f| (f.path.as_str(), f)).collect();
    let missing: Vec<&str> = expected
        .keys()
        .filter(|path| present.binary_search_by(|p| p.as_str().cmp(path)).is_err())
        .copied()
        .collect();
    let extra: Vec<&str> = present
        .iter()
        .map(String::as_str)
        .filter(|path| !expected.contains_key(path))
        .collect();
    let both: Vec<String> = present
        .iter()
        .filter(|path| expected.contains_key(path.as_str()))
        .cloned()
        .collect();
    let changed: Vec<String> = describe_files(dir, &both)?
        .into_iter()
        .filter(|found| expected.get(found.path.as_str()) != Some(&found))
        .map(|found| {
            let want = expected[found.path.as_str()];
            format!(
                "{} ({} bytes, sha256 {}; release.json lists {} bytes, sha256 {})",
                found.path, found.bytes, found.sha256, want.bytes, want.sha256
            )
        })
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing: {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        problems.push(format!("not listed: {}", extra.join(", ")));
    }
    if !changed.is_empty() {
        problems.push(format!("changed: {}", changed.join(", ")));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ReleaseError::Tampered {
            dir: dir.to_path_buf(),
            problems,
        })
    }
}

/// The base's config and weights must be the ones the release was made from, and the release's config.json
/// the base's: otherwise the adapter would be applied to a different model.
fn check_base(
    base: &Path,
    recorded: &BaseModel,
    release_files: &[FileEntry],
) -> Result<(), ReleaseError> {
    let names: Vec<String> = recorded.files.iter().map(|f| f.path.clone()).collect();
    for (found, want) in describe_files(base, &names)?.iter().zip(&recorded.files) {
        if found.sha256 != want.sha256 {
            return Err(ReleaseError::BaseChanged {
                path: base.join(&found.path),
                expected: want.sha256.clone(),
                found: found.sha256.clone(),
            });
        }
    }
    let base_config = recorded.files.iter().find(|f| f.path == "config.json");
    let release_config = release_files.iter().find(|f| f.path == "config.json");
    match (base_config, release_config) {
        (Some(base_config), Some(release_config))
            if base_config.sha256 == release_config.sha256 =>
        {
            Ok(())
        }
        _ => Err(ReleaseError::invalid(
            base.join("config.json"),
            "the release's config.json is not the base model's",
        )),
    }
}

/// Each of p_yes, z_yes and z_no within `tolerance` of the expected value, relative to max(1, |expected|).
fn compare(
    variant: &str,
    got: PairScore,
    expected: PairScore,
    tolerance: f32,
) -> Result<(), ReleaseError> {
    let close = |a: f32, b: f32| (a - b).abs() <= tolerance * b.abs().max(1.0);
    if close(got.p_yes, expected.p_yes)
        && close(got.z_yes, expected.z_yes)
        && close(got.z_no, expected.z_no)
    {
        Ok(())
    } else {
        Err(ReleaseError::ScoreMismatch {
            variant: variant.to_string(),
            got,
            expected,
        })
    }
}

/// The parts of a reranker kept in a release: weights (and their config) in `weights`, the tokenizer and image
/// processor in `files`.
fn parts<'a>(weights: &'a Path, files: &'a Path, adapter: Option<&'a Path>) -> RerankerParts<'a> {
    RerankerParts {
        weights,
        files: Some(files),
        adapter,
        prompt: None,
    }
}
