//! Writing a release directory from a train stage, its base model and its eval stages.
//!
//! A train stage that tuned LoRA adapters (`adapter/`) gives an adapter release:
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
//! One that fine-tuned the whole model (`model/`) gives a full release: the model's files and weights, the license
//! files of the model it started from, README.md and release.json; no adapter, no base needed to load it.
//!
//! The directory is assembled under a temporary name next to its destination and renamed into place when
//! complete, so a crash never leaves a directory that looks like a release.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::Device;

use super::card::{self, CardInput, LicenseSource};
use super::check::{score_check_pair, CheckPair};
use super::files::{
    base_license, copy_license_files, copy_model_files, copy_prompt_record, weight_files,
    CopiedFiles,
};
use super::lineage;
use super::manifest::{
    describe_files, list_files, BaseModel, ReleaseKind, ReleaseManifest, ScoreCheck, RELEASE_FORMAT,
};
use super::merge::write_merged;
use super::metrics::{MetricsTable, Released};
use super::provenance::Provenance;
use super::ReleaseError;
use crate::media::preprocess::ImageBackend;
use crate::models::adapters::lora::LoraConfig;
use crate::models::adapters::peft::{PeftAdapter, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::models::qwen2_vl::{PairScore, Qwen2VlModel};
use crate::models::reranker::RerankerParts;
use crate::schema::outputs;

/// The train config key naming the base model directory.
pub const TRAIN_MODEL_KEY: &str = "model";
/// The train config key of a random initialisation (`tiny`, `tiny-text`, a config.json path).
pub const TRAIN_INIT_KEY: &str = "init";
/// The train config key naming the image processor backend the model was trained with.
pub const TRAIN_IMAGE_PROCESSOR_KEY: &str = "image_processor";

/// Score tolerance, relative to max(1, |score|), for loading back the same weights in f32.
const EXACT_TOLERANCE: f32 = 1e-4;
/// For merged weights rounded to bf16/f16: a bf16 weight carries about 3 significant digits.
const ROUNDED_TOLERANCE: f32 = 5e-2;

/// What to release.
#[derive(Debug, Clone, Default)]
pub struct ReleaseSpec {
    /// The train stage directory: its manifest and `adapter/` (or `model/` for full fine-tuning).
    pub train_dir: PathBuf,
    /// Eval stage directories whose `metrics.json` fill the card's table.
    pub eval_dirs: Vec<PathBuf>,
    /// The base model directory of an adapter; by default the train config's `model`.
    pub base: Option<PathBuf>,
    /// The base model's name for the card and adapter_config.json (a Hub id); by default the base's path.
    pub base_model_name: Option<String>,
    /// A license id for the card; by default the base model card's, else `other`.
    pub license: Option<String>,
    /// Also write merged weights under `merged/` (adapter releases only).
    pub merged: bool,
    /// The release this one replaces (a gate's baseline), for the lineage.
    pub previous: Option<PathBuf>,
}

/// What the train stage left to release.
enum Trained {
    Adapter(PathBuf),
    Full(PathBuf),
}

impl Trained {
    /// The train stage's `adapter/` or `model/`, whichever it wrote.
    fn find(train_dir: &Path) -> Result<Self, ReleaseError> {
        let adapter = train_dir.join(outputs::train::ADAPTER);
        let model = train_dir.join(outputs::train::MODEL);
        match (adapter.is_dir(), model.is_dir()) {
            (true, false) => {
                let extra = adapter.join(outputs::train::EXTRA_WEIGHTS);
                if extra.exists() {
                    return Err(ReleaseError::invalid(
                        extra,
                        "base weights were trained besides the LoRA adapter (train_lm_head or train_vision); a \
                         PEFT adapter cannot carry them, so releasing it alone would not give the trained scores",
                    ));
                }
                Ok(Self::Adapter(adapter))
            }
            (false, true) => Ok(Self::Full(model)),
            (true, true) => Err(ReleaseError::invalid(
                train_dir,
                format!(
                    "holds both {}/ and {}/: not one train stage's output",
                    outputs::train::ADAPTER,
                    outputs::train::MODEL
                ),
            )),
            (false, false) => Err(ReleaseError::Io {
                path: adapter,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "the train stage wrote neither {}/ nor {}/",
                        outputs::train::ADAPTER,
                        outputs::train::MODEL
                    ),
                ),
            }),
        }
    }
}

/// The model part of a release, written into the temporary directory, and what the card and manifest say of it.
struct Assembled {
    kind: ReleaseKind,
    base_model_name: Option<String>,
    base_model: Option<BaseModel>,
    /// The directory whose model card names the license, if any.
    license_dir: Option<PathBuf>,
    lora: Option<LoraConfig>,
    copied: CopiedFiles,
    pair: CheckPair,
    expected: PairScore,
    merged_tolerance: Option<f32>,
}

/// Writes the release described by `spec` to `out` (replacing what was there) and returns its manifest. The
/// check pair is scored on `device`, in f32.
pub fn write_release(
    spec: &ReleaseSpec,
    out: &Path,
    device: &Device,
) -> Result<ReleaseManifest, ReleaseError> {
    let provenance = Provenance::collect(&spec.train_dir, &spec.eval_dirs)?;
    let lineage = lineage::collect(&provenance, spec.previous.as_deref())?;
    let trained = Trained::find(&spec.train_dir)?;
    let tmp = temporary_sibling(out)?;
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(ReleaseError::io(&tmp))?;
    }
    let assembled = match &trained {
        Trained::Adapter(adapter) => assemble_adapter(spec, &provenance, adapter, &tmp, device)?,
        Trained::Full(model) => assemble_full(spec, &provenance, model, &tmp, device)?,
    };

    let eval_stages: Vec<(String, &Path)> = provenance
        .evals
        .iter()
        .map(|stage| (stage.name.clone(), stage.dir.as_path()))
        .collect();
    let released = match &trained {
        Trained::Adapter(dir) => Released::Adapter(dir),
        Trained::Full(dir) => Released::Model(dir),
    };
    let metrics = MetricsTable::read(&eval_stages, released);
    let configured = spec.license.clone();
    let inherited = assembled.license_dir.as_deref().and_then(base_license);
    let (license, license_source) = match (configured, inherited) {
        (Some(license), _) => (license, LicenseSource::Configured),
        (None, Some(license)) => (license, LicenseSource::BaseModel),
        (None, None) => ("other".to_string(), LicenseSource::Unknown),
    };
    // The card and release.json name the run's stages from the run directory.
    let written = provenance.named_from(spec.train_dir.parent().unwrap_or(Path::new("")));
    let readme = card::render(&CardInput {
        kind: assembled.kind,
        base_model: assembled.base_model_name.as_deref(),
        license: &license,
        license_source,
        lora: assembled.lora.as_ref(),
        merged: spec.merged,
        generated_preprocessor: assembled.copied.generated_preprocessor,
        provenance: &written,
        lineage: &lineage,
        metrics: &metrics,
        check: assembled.expected,
    });
    let readme_path = tmp.join("README.md");
    fs::write(&readme_path, readme).map_err(ReleaseError::io(&readme_path))?;

    let manifest = ReleaseManifest {
        format: RELEASE_FORMAT,
        umrank_version: env!("CARGO_PKG_VERSION").to_string(),
        kind: assembled.kind,
        base_model_name: assembled.base_model_name,
        base_model: assembled.base_model,
        merged: spec.merged,
        files: describe_files(&tmp, &list_files(&tmp)?)?,
        provenance: written,
        lineage,
        check: ScoreCheck {
            pair: assembled.pair,
            expected: assembled.expected,
            tolerance: EXACT_TOLERANCE,
            merged_tolerance: assembled.merged_tolerance,
        },
    };
    manifest.write(&tmp)?;
    if out.exists() {
        fs::remove_dir_all(out).map_err(ReleaseError::io(out))?;
    }
    fs::rename(&tmp, out).map_err(ReleaseError::io(out))?;
    Ok(manifest)
}

/// An adapter release: the base's files, the adapter, optionally merged weights; the check pair scored with base
/// + the train stage's adapter.
fn assemble_adapter(
    spec: &ReleaseSpec,
    provenance: &Provenance,
    adapter: &Path,
    tmp: &Path,
    device: &Device,
) -> Result<Assembled, ReleaseError> {
    let base = match &spec.base {
        Some(base) => base.clone(),
        None => base_from_train(provenance, &spec.train_dir)?,
    };
    let base_name = spec
        .base_model_name
        .clone()
        .unwrap_or_else(|| base.display().to_string());
    let vision = Qwen2VlModel::is_vl_dir(&base);
    let copied = copy_model_files(&base, tmp, trained_image_backend(provenance)?)?;
    copy_adapter(adapter, tmp, &base_name, vision)?;
    copy_prompt_record(adapter, tmp)?;
    let lora = PeftAdapter::read(tmp, &Device::Cpu)?.config().clone();

    let pair = CheckPair::builtin(vision);
    let parts = RerankerParts {
        weights: &base,
        files: Some(tmp),
        adapter: Some(adapter),
        prompt: None,
    };
    let expected = score_check_pair(parts, &pair, device)?;
    let merged_tolerance = if spec.merged {
        let merged_dir = tmp.join(outputs::release::MERGED);
        let summary = write_merged(&base, tmp, &merged_dir)?;
        copy_model_files(&base, &merged_dir, trained_image_backend(provenance)?)?;
        copy_prompt_record(adapter, &merged_dir)?;
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
    let mut base_files = vec!["config.json".to_string()];
    base_files.extend(weight_files(&base)?);
    Ok(Assembled {
        kind: ReleaseKind::Adapter,
        base_model_name: Some(base_name),
        base_model: Some(BaseModel {
            files: describe_files(&base, &base_files)?,
            path: base.clone(),
        }),
        license_dir: Some(base),
        lora: Some(lora),
        copied,
        pair,
        expected,
        merged_tolerance,
    })
}

/// A full release: the fine-tuned model's files and weights, and the license files of the model it started from
/// (if it started from one); the check pair scored with the train stage's model.
fn assemble_full(
    spec: &ReleaseSpec,
    provenance: &Provenance,
    model: &Path,
    tmp: &Path,
    device: &Device,
) -> Result<Assembled, ReleaseError> {
    let refuse = |what: &str| {
        ReleaseError::Config(format!(
            "{} holds a fully fine-tuned model: {what} applies to adapter releases only",
            spec.train_dir.display()
        ))
    };
    if spec.merged {
        return Err(refuse("`merged` (its weights are already complete)"));
    }
    if spec.base.is_some() {
        return Err(refuse("a base model directory (`model`)"));
    }
    let origin = provenance
        .train
        .config_value(TRAIN_MODEL_KEY)
        .and_then(|value| value.as_str())
        .map(PathBuf::from);
    let copied = copy_model_files(model, tmp, trained_image_backend(provenance)?)?;
    copy_prompt_record(model, tmp)?;
    for name in weight_files(model)? {
        let (from, to) = (model.join(&name), tmp.join(&name));
        fs::copy(&from, &to).map_err(ReleaseError::io(&from))?;
    }
    if let Some(origin) = &origin {
        copy_license_files(origin, tmp)?;
    }
    let pair = CheckPair::builtin(Qwen2VlModel::is_vl_dir(model));
    let parts = RerankerParts {
        weights: model,
        files: Some(tmp),
        adapter: None,
        prompt: None,
    };
    let expected = score_check_pair(parts, &pair, device)?;
    Ok(Assembled {
        kind: ReleaseKind::Full,
        base_model_name: spec
            .base_model_name
            .clone()
            .or_else(|| origin.as_ref().map(|o| o.display().to_string())),
        base_model: None,
        license_dir: origin,
        lora: None,
        copied,
        pair,
        expected,
        merged_tolerance: None,
    })
}

/// The image processor backend the train stage resized images with: its config's `image_processor`, or PIL's for a
/// train stage from before the setting existed (umrank resized as PIL does then).
fn trained_image_backend(provenance: &Provenance) -> Result<ImageBackend, ReleaseError> {
    match provenance.train.config_value(TRAIN_IMAGE_PROCESSOR_KEY) {
        None => Ok(ImageBackend::Pil),
        Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
            ReleaseError::invalid(
                &provenance.train.dir,
                format!("`{TRAIN_IMAGE_PROCESSOR_KEY}` in the train stage's config: {e}"),
            )
        }),
    }
}

/// The base model directory the train stage recorded in its config.
fn base_from_train(provenance: &Provenance, train_dir: &Path) -> Result<PathBuf, ReleaseError> {
    let train = &provenance.train;
    if let Some(base) = train.config_value(TRAIN_MODEL_KEY).and_then(|v| v.as_str()) {
        return Ok(PathBuf::from(base));
    }
    let reason = match train.config_value(TRAIN_INIT_KEY) {
        Some(init) => format!(
            "the train stage in {} trained its adapter on a randomly initialised model (`{TRAIN_INIT_KEY} = {init}`), \
             whose weights it does not save: there is no base to release the adapter for (train with \
             `tune = \"full\"` to release the whole model)",
            train_dir.display()
        ),
        None => format!(
            "the train stage in {} records no base model directory (`{TRAIN_MODEL_KEY}` in its config); give the \
             base model with `model = DIR`",
            train_dir.display()
        ),
    };
    Err(ReleaseError::Config(reason))
}

/// `.NAME.tmp` next to `out`: the pipeline's temporary-name convention, so a leftover is cleaned up by reruns.
fn temporary_sibling(out: &Path) -> Result<PathBuf, ReleaseError> {
    let name = out.file_name().ok_or_else(|| {
        ReleaseError::Config(format!("{} is not a directory name", out.display()))
    })?;
    let parent = out.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(ReleaseError::io(parent))?;
    Ok(parent.join(crate::atomic::temporary_sibling(Path::new(name))))
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
