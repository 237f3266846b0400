//! Writing a release directory from a train stage, its base model and its eval stages.
//!
//! ```text
//! <release>/
//!   README.md                 model card
//!   release.json              every file's sha256, the base's hashes, provenance, the check pair's score
//!   adapter_config.json       PEFT adapter (base_model_name_or_path set to the base model's name)
//!   adapter_model.safetensors
//!   config.json, tokenizer.json, tokenizer_config.json, ...   the base's non-weight files (files::MODEL_FILES)
//!   preprocessor_config.json  for vision-language models
//!   merged/                   optional: the base weights with the adapter merged in, plus the same files
//! ```
//!
//! The directory is assembled under a temporary name next to its destination and renamed into place when
//! complete, so a crash never leaves a directory that looks like a release.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::Device;

use super::card::{self, CardInput, LicenseSource};
use super::check::{CheckPair, Reranker};
use super::files::{base_license, copy_model_files, weight_files};
use super::manifest::{
    describe_files, list_files, BaseModel, ReleaseManifest, ScoreCheck, MERGED_DIR, RELEASE_FORMAT,
};
use super::merge::write_merged;
use super::metrics::MetricsTable;
use super::provenance::Provenance;
use super::ReleaseError;
use crate::models::peft::{PeftAdapter, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::models::qwen2_vl::Qwen2VlModel;

/// Where a train stage leaves its final adapter, in PEFT format.
pub const TRAIN_ADAPTER_DIR: &str = "adapter";

/// The train config key naming the base model directory.
pub const TRAIN_MODEL_KEY: &str = "model";

/// Score tolerance, relative to max(1, |score|), for loading back the same weights in f32.
const EXACT_TOLERANCE: f32 = 1e-4;
/// For merged weights rounded to bf16/f16: a bf16 weight carries about 3 significant digits.
const ROUNDED_TOLERANCE: f32 = 5e-2;

/// What to release.
#[derive(Debug, Clone, Default)]
pub struct ReleaseSpec {
    /// The train stage directory: its manifest and `adapter/`.
    pub train_dir: PathBuf,
    /// Eval stage directories whose `metrics.json` fill the card's table.
    pub eval_dirs: Vec<PathBuf>,
    /// The base model directory; by default the train config's `model`.
    pub base: Option<PathBuf>,
    /// The base model's name for the card and adapter_config.json (a Hub id); by default the base's path.
    pub base_model_name: Option<String>,
    /// A license id for the card; by default the base model card's, else `other`.
    pub license: Option<String>,
    /// Also write merged weights under `merged/`.
    pub merged: bool,
}

/// Writes the release described by `spec` to `out` (replacing what was there) and returns its manifest. The
/// check pair is scored on `device`, in f32.
pub fn write_release(
    spec: &ReleaseSpec,
    out: &Path,
    device: &Device,
) -> Result<ReleaseManifest, ReleaseError> {
    let provenance = Provenance::collect(&spec.train_dir, &spec.eval_dirs)?;
    let base = match &spec.base {
        Some(base) => base.clone(),
        None => base_from_train(&provenance, &spec.train_dir)?,
    };
    let adapter = spec.train_dir.join(TRAIN_ADAPTER_DIR);
    let base_name = spec
        .base_model_name
        .clone()
        .unwrap_or_else(|| base.display().to_string());
    let tmp = temporary_sibling(out)?;
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(ReleaseError::io(&tmp))?;
    }
    let copied = copy_model_files(&base, &tmp)?;
    copy_adapter(&adapter, &tmp, &base_name, Qwen2VlModel::is_vl_dir(&base))?;
    let lora = PeftAdapter::read(&tmp, &Device::Cpu)?.config().clone();

    let pair = CheckPair::builtin(Qwen2VlModel::is_vl_dir(&base));
    let expected = Reranker::load(&base, &tmp, Some(&adapter), device)?.score(&pair)?;
    let merged_tolerance = if spec.merged {
        let merged_dir = tmp.join(MERGED_DIR);
        let summary = write_merged(&base, &tmp, &merged_dir)?;
        copy_model_files(&base, &merged_dir)?;
        tracing::info!(
            "merged {} of {} tensors into {}",
            summary.merged,
            summary.tensors,
            merged_dir.display()
        );
        Some(if summary.rounded {
            ROUNDED_TOLERANCE
        } else {
            EXACT_TOLERANCE
        })
    } else {
        None
    };

    let eval_stages: Vec<(String, &Path)> = provenance
        .evals
        .iter()
        .map(|stage| (stage.name.clone(), stage.dir.as_path()))
        .collect();
    let metrics = MetricsTable::read(&eval_stages);
    let (license, license_source) = match (&spec.license, base_license(&base)) {
        (Some(license), _) => (license.clone(), LicenseSource::Configured),
        (None, Some(license)) => (license, LicenseSource::BaseModel),
        (None, None) => ("other".to_string(), LicenseSource::Unknown),
    };
    let readme = card::render(&CardInput {
        base_model: &base_name,
        license: &license,
        license_source,
        lora: &lora,
        merged: spec.merged,
        generated_preprocessor: copied.generated_preprocessor,
        provenance: &provenance,
        metrics: &metrics,
        check: expected,
    });
    let readme_path = tmp.join("README.md");
    fs::write(&readme_path, readme).map_err(ReleaseError::io(&readme_path))?;

    let mut base_files = vec!["config.json".to_string()];
    base_files.extend(weight_files(&base)?);
    let manifest = ReleaseManifest {
        format: RELEASE_FORMAT,
        umrank_version: env!("CARGO_PKG_VERSION").to_string(),
        base_model: BaseModel {
            name: base_name,
            path: base.clone(),
            files: describe_files(&base, &base_files)?,
        },
        merged: spec.merged,
        files: describe_files(&tmp, &list_files(&tmp)?)?,
        provenance,
        check: ScoreCheck {
            pair,
            expected,
            tolerance: EXACT_TOLERANCE,
            merged_tolerance,
        },
    };
    manifest.write(&tmp)?;
    if out.exists() {
        fs::remove_dir_all(out).map_err(ReleaseError::io(out))?;
    }
    fs::rename(&tmp, out).map_err(ReleaseError::io(out))?;
    Ok(manifest)
}

/// The base model directory the train stage recorded in its config.
fn base_from_train(provenance: &Provenance, train_dir: &Path) -> Result<PathBuf, ReleaseError> {
    provenance
        .train
        .config_value(TRAIN_MODEL_KEY)
        .and_then(|value| value.as_str())
        .map(PathBuf::from)
        .ok_or_else(|| {
            ReleaseError::Config(format!(
                "the train stage in {} records no base model directory (`{TRAIN_MODEL_KEY}` in its config); \
                 give the base model with `model = DIR`",
                train_dir.display()
            ))
        })
}

/// `.NAME.tmp` next to `out`: the pipeline's temporary-name convention, so a leftover is cleaned up by reruns.
fn temporary_sibling(out: &Path) -> Result<PathBuf, ReleaseError> {
    let name = out.file_name().ok_or_else(|| {
        ReleaseError::Config(format!("{} is not a directory name", out.display()))
    })?;
    let parent = out.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(ReleaseError::io(parent))?;
    Ok(parent.join(format!(".{}.tmp", name.to_string_lossy())))
}

/// Copies the adapter with its config's `base_model_name_or_path` set to the base's name, which is what peft's
/// `from_pretrained` of the release directory will look up. A vision-language adapter is written in the layout of
/// transformers >= 4.52, whose Qwen2-VL classes keep the decoder under `model.language_model.`: peft matches keys
/// to module paths literally, and silently leaves an adapter saved under `model.layers.` unapplied there.
fn copy_adapter(
    adapter: &Path,
    out: &Path,
    base_name: &str,
    vision: bool,
) -> Result<(), ReleaseError> {
    let weights = adapter.join(ADAPTER_WEIGHTS);
    let to = out.join(ADAPTER_WEIGHTS);
    if vision {
        write_nested_layout(&weights, &to)?;
    } else {
        fs::copy(&weights, &to).map_err(ReleaseError::io(&weights))?;
    }
    let config_path = adapter.join(ADAPTER_CONFIG);
    let text = fs::read_to_string(&config_path).map_err(ReleaseError::io(&config_path))?;
    let mut config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ReleaseError::invalid(&config_path, e.to_string()))?;
    let object = config
        .as_object_mut()
        .ok_or_else(|| ReleaseError::invalid(&config_path, "not a JSON object"))?;
    object.insert(
        "base_model_name_or_path".into(),
        serde_json::Value::String(base_name.to_string()),
    );
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| ReleaseError::invalid(&config_path, e.to_string()))?;
    let to = out.join(ADAPTER_CONFIG);
    fs::write(&to, text + "\n").map_err(ReleaseError::io(&to))
}

/// Adapter keys of the flat decoder layout and their nested-layout names.
const FLAT_ADAPTER_PREFIX: &str = "base_model.model.model.layers.";
const NESTED_ADAPTER_PREFIX: &str = "base_model.model.model.language_model.layers.";

/// Rewrites the adapter at `from` to `to` with every flat-layout key renamed to the nested layout; the tensors
/// themselves are copied byte for byte.
fn write_nested_layout(from: &Path, to: &Path) -> Result<(), ReleaseError> {
    let bytes = fs::read(from).map_err(ReleaseError::io(from))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| ReleaseError::invalid(from, e.to_string()))?;
    let renamed: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .tensors()
        .into_iter()
        .map(
            |(name, view)| match name.strip_prefix(FLAT_ADAPTER_PREFIX) {
                Some(rest) => (format!("{NESTED_ADAPTER_PREFIX}{rest}"), view),
                None => (name, view),
            },
        )
        .collect();
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(renamed, Some(metadata), to).map_err(|e| ReleaseError::Write {
        path: to.to_path_buf(),
        reason: e.to_string(),
    })
}
